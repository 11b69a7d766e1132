"""The compile policy of every kernel, in one place.

Every kernel is ``@njit(cache=True, nogil=True, _nrt=False)``: cached (the
cache guard keeps it coherent), free of the GIL, and without numba's reference
counting, which would incref and decref every array of the state on each call
(nothing on the per-page path allocates, so it needs none). Two choices vary:

* **Entry** (``kernel``) or **internal** (``internal``). numba gives every
  compiled function a CPython wrapper (unboxing the state's 29 arrays) and a
  C-callable wrapper, and compiling those was most of a small kernel's compile
  time (0.18 s against 0.02 s without, for a one-line function taking the
  state). Functions only compiled code calls are built without them. Calling
  one from Python would jump to a wrapper that does not exist, so their
  dispatcher raises TypeError instead.
* **Where it is inlined.** A call passes the state as ~200 flattened values:
  ~0.2 s of its caller's compile time per call site, tens of ns per call at
  run time, and, from users' reference-counted code, an incref and a decref
  of every array (~400 ns). So:

  - ``inline=True``: numba inlines the function's IR into each caller. For
    small leaves only: numba types the IR again at every site, and inlining
    the passes' per-slot chains this way made the first compile take minutes.
  - ``hot=True``: numba compiles the function once, and LLVM inlines it
    (``alwaysinline``) when it links it into its callers: for what runs per
    page (the passes' per-slot steps, the page allocator's frees) or once per
    small migration. Its compile cost is LLVM's, not numba's typing.
  - neither: a real call, for the big walks and the entry points.

  docs/performance.md ("Cold start and compile time") has the measurements.
"""

from numba.core.caching import NullCache
from numba.core.registry import CPUDispatcher

_POLICY = {"nopython": True, "nogil": True, "_nrt": False}


class KernelDispatcher(CPUDispatcher):
    """A cached kernel whose cache is opened on its first compile or cache load.

    Opening a function's cache finds and tests its cache directory; done for
    every kernel at import, it was a third of ``import migengine``.
    """

    def compile(self, sig):
        if isinstance(self._cache, NullCache):
            self.enable_caching()
        return super().compile(sig)


class InternalDispatcher(KernelDispatcher):
    """A kernel compiled without its Python entry: callable from compiled code only."""

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"{self.py_func.__module__}.{self.py_func.__qualname__} is internal to "
            "migengine.kernels and has no Python entry: call it from compiled code"
        )


def _options(inline: bool, parallel: bool, hot: bool = False) -> dict:
    options = dict(_POLICY)
    if inline:
        options["inline"] = "always"
    if parallel:
        options["parallel"] = True
    if hot:
        options["forceinline"] = True
    return options


def kernel(fn=None, *, inline=False, parallel=False):
    """An entry point: callable from Python and from compiled code."""

    def wrap(f):
        return KernelDispatcher(py_func=f, locals={}, targetoptions=_options(inline, parallel))

    return wrap if fn is None else wrap(fn)


def internal(fn=None, *, inline=False, parallel=False, hot=False):
    """A kernel only compiled code calls: no CPython or C wrapper is built.

    ``hot``: called per page; LLVM inlines it into its callers (``alwaysinline``),
    so no call passes the state's ~200 values, while numba still types and
    lowers it once."""

    def wrap(f):
        options = _options(inline, parallel, hot)
        options["no_cpython_wrapper"] = True
        options["no_cfunc_wrapper"] = True
        return InternalDispatcher(py_func=f, locals={}, targetoptions=options)

    return wrap if fn is None else wrap(fn)
