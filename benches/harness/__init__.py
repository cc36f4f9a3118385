"""The benchmark runner's parts (benches/run.py is the command line and the run itself):

- ``scenarios``: what is measured (settings, scenarios, rows and their baselines);
- ``processes``: launching, watching and stopping server and load-generator processes;
- ``measure``: one measurement per server process, rounds, the in-process sections;
- ``report``: medians, ratios, markdown tables, JSON, merging an earlier run;
- ``chart``: the SVG chart of requests/s per scenario.
"""
