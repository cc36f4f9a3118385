"""The handler work every server in this benchmark does: ``burn(n)``, a loop of pure Python
taking about 50 µs for the ``n`` the runner calibrates (``calibrate``)."""

import time


def burn(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def calibrate(target_s=50e-6):
    """The ``n`` for which ``burn(n)`` takes ``target_s`` here (median of a few tries)."""
    n = 1000
    tries = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(200):
            burn(n)
        tries.append((time.perf_counter() - started) / 200)
    per_call = sorted(tries)[len(tries) // 2]
    return max(1, round(n * target_s / per_call))
