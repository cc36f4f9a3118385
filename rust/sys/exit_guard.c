/* The engine's calls into Python, on glibc: if CPython ends the calling thread during the call
 * (a daemon thread that needs the GIL while the interpreter finalizes: CPython before 3.14
 * calls pthread_exit()), the thread parks here instead of letting glibc's forced unwind run
 * on into the Rust frames that made the call (see rust/finalize.rs and EXIT_GUARD in rust/sys/mod.rs).
 *
 * pthread_cleanup_push() in C without exceptions registers a jump buffer: glibc's unwinder
 * jumps back into this frame as soon as the unwind reaches it, before any frame below it, and
 * runs the cleanup routine, which never returns. Only glibc's pthread_exit() unwinds; musl's
 * and macOS's run the same cleanup routine without unwinding, so they need no such guard and
 * build.rs compiles this file for glibc targets only. */
#ifdef __EXCEPTIONS
#error "compile without -fexceptions: the guard relies on the jump-buffer pthread_cleanup_push"
#endif

#include <pthread.h>
#include <unistd.h>

/* From CPython's stable ABI; the extension module resolves it against the interpreter. */
typedef struct _object PyObject;
extern PyObject *PyObject_Call(PyObject *callable, PyObject *args, PyObject *kwargs);

static void park_forever(void *unused) {
    (void)unused;
    for (;;) {
        pause();
    }
}

PyObject *socketserver_rs_guarded_call(PyObject *callable, PyObject *args, PyObject *kwargs) {
    PyObject *result;
    pthread_cleanup_push(park_forever, NULL);
    result = PyObject_Call(callable, args, kwargs);
    pthread_cleanup_pop(0);
    return result;
}
