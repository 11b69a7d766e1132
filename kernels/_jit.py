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
* **Machine code only where it runs.** numba links a callee's whole graph into
  each caller, optimizes the linked module at O3 and emits machine code for
  it. Emitting it at every level paid for the migration pipeline's machine
  code again at each compiled level above it. So an internal kernel is
  link-only (:class:`_LinkOnlyLibrary`: optimized IR for its callers, no
  machine code). Compiled code calling an entry point links the entry if it
  is compiled or cached, and else a link-only twin of it
  (:class:`KernelDispatcher`): only what Python calls, and users' ``@njit``
  functions, emit machine code. The IR stays optimized at every level: a
  user's function linking unoptimized IR compiled several times slower.
  Thin levels above the pipeline (the range loops, ``handle_mm_fault``) are
  inlined as IR, so they are no level at all.
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

* **Loading from the cache.** numba's cache entry of a function holds its
  machine code and the IR its compiled callers link, and numba parses that IR
  on every load. An entry point's IR is parsed only when a compiled caller
  links it (:class:`_EntryLibrary`): a process that only calls the kernels
  from Python never parses it.

  docs/performance.md ("Cold start and compile time") has the measurements.
"""

from llvmlite import binding as ll
from numba.core.caching import CompileResultCacheImpl, FunctionCache, NullCache
from numba.core.codegen import JITCodeLibrary
from numba.core.compiler import Compiler, CompileResult
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import CPUDispatcher
from numba.core.sigutils import normalize_signature

_POLICY = {"nopython": True, "nogil": True, "_nrt": False}


class _LazyCacheDispatcher(CPUDispatcher):
    """A cached kernel whose cache is opened on its first compile or cache load.

    Opening a function's cache finds and tests its cache directory; done for
    every kernel at import, it was a third of ``import migengine``.
    """

    def compile(self, sig):
        if isinstance(self._cache, NullCache):
            self.enable_caching()
        return super().compile(sig)


class _EnvLessCodegen:
    """The JIT codegen as a :class:`_LinkOnlyLibrary` sees it. numba points a
    compiled function's environment global at its environment, in the
    function's own module in the engine, which an internal kernel does not
    have. Only a CPython wrapper reads its environment (nopython code without
    Python objects never does), and internal kernels have none."""

    def __init__(self, codegen):
        self._codegen = codegen

    def set_env(self, env_name, env):
        pass

    def __getattr__(self, name):
        return getattr(self._codegen, name)


class _LinkOnlyLibrary(JITCodeLibrary):
    """The code library of a link-only kernel: optimized LLVM IR for the callers
    that link it, and no machine code (which would never run). Its cache entry
    holds that IR and an empty object, so loading it emits nothing either."""

    def _finalize_final_module(self):
        self._finalize_dynamic_globals()
        self._verify_declare_only_symbols()
        self._finalized = True

    @property
    def codegen(self):
        return _EnvLessCodegen(self._codegen)

    def get_pointer_to_function(self, name):
        self._ensure_finalized()
        return 0  # no machine code: InternalDispatcher refuses calls from Python

    def serialize_using_object_code(self):
        self._ensure_finalized()
        return (self.name, "object", (b"", self._get_module_for_linking().as_bitcode()))


class _LinkOnlyCompiler(Compiler):
    """numba's pipeline, lowering into a :class:`_LinkOnlyLibrary`."""

    def compile_extra(self, func):
        library = _LinkOnlyLibrary(self.state.targetctx.codegen(), func.__qualname__)
        library.enable_object_caching()
        self.state.library = library
        return super().compile_extra(func)


class _LinkOnlyCacheImpl(CompileResultCacheImpl):
    """Loads a link-only kernel's cache entry as a :class:`_LinkOnlyLibrary`
    holding its IR. numba's own loader would hand the engine the empty object,
    then write the kernel's environment pointer into a global the engine does
    not have (a segfault)."""

    def get_filename_base(self, fullname, abiflags):
        return super().get_filename_base(fullname + "~ir", abiflags)

    def rebuild(self, target_context, payload):
        _run_reload_init(payload)
        name, _, (_, bitcode) = payload[0]
        library = _LinkOnlyLibrary(target_context.codegen(), name)
        library._shared_module = ll.parse_bitcode(bitcode)
        library._finalized = True
        return _compile_result(target_context, library, payload)


def _run_reload_init(payload):
    for fn in payload[7]:
        fn()


def _compile_result(target_context, library, payload):
    """A cache entry's CompileResult around ``library``, as numba's own
    ``CompileResult._rebuild`` makes it once it has unserialized the library."""
    _, fndesc, env, signature, objectmode, lifted, typeann, reload_init, envs = payload
    cres = CompileResult(
        target_context=target_context,
        typing_context=target_context.typing_context,
        library=library,
        environment=env,
        entry_point=target_context.get_executable(library, fndesc, env),
        fndesc=fndesc,
        type_annotation=typeann,
        signature=signature,
        objectmode=objectmode,
        lifted=lifted,
        typing_error=None,
        call_helper=None,
        metadata=None,
        reload_init=reload_init,
        referenced_envs=envs,
    )
    for referenced in envs:
        library.codegen.set_env(referenced.env_name, referenced)
    return cres


class _LinkOnlyCache(FunctionCache):
    """A link-only kernel's cache, in files of its own: an entry point's
    compiled-code twin (:class:`KernelDispatcher`) shares its function, and
    must never load the entry point's machine code or give it its empty one."""

    _impl_class = _LinkOnlyCacheImpl


class _EntryLibrary(JITCodeLibrary):
    """An entry point's code library loaded from the cache. Its machine code goes
    into the engine at once; the IR its compiled callers would link is parsed
    only when one links it. numba parses that IR on every load, and for the
    simulation's replay (11.6 MB of bitcode) the parse was 0.53 s of a 0.76 s
    cache load, paid by every process that runs a simulation, while only a
    compiled caller (a user's ``@njit`` code) ever reads it."""

    _linking_bitcode = None

    def _get_module_for_linking(self):
        if self._shared_module is None and self._linking_bitcode is not None:
            self._shared_module = ll.parse_bitcode(self._linking_bitcode)
            self._linking_bitcode = None
        return super()._get_module_for_linking()


class _EntryCacheImpl(CompileResultCacheImpl):
    """An entry point's cache entry, with the names of the symbols its linking IR
    defines beside that IR, so that loading it (:class:`_EntryLibrary`) can tell
    the engine what it defines without parsing the IR."""

    def reduce(self, cres):
        payload = cres._reduce()
        name, kind, (obj, bitcode) = payload[0]
        mod = cres.library._get_module_for_linking()
        defined = [v.name for v in mod.functions if not v.is_declaration]
        defined += [v.name for v in mod.global_variables if not v.is_declaration]
        return ((name, kind, (obj, bitcode, tuple(defined))), *payload[1:])

    def rebuild(self, target_context, payload):
        name, _, (obj, bitcode, defined) = payload[0]
        _run_reload_init(payload)
        codegen = target_context.codegen()
        library = _EntryLibrary(codegen, name)
        library.enable_object_caching()
        library._set_compiled_object(obj)
        library._linking_bitcode = bitcode
        library._finalize_final_module()
        codegen._engine._defined_symbols.update(defined)
        return _compile_result(target_context, library, payload)


class _EntryCache(FunctionCache):
    """An entry point's cache (:class:`_EntryCacheImpl`). Its entries hold one
    field more than numba's, in numba's file names: an entry written before
    this file changed is never read, since the cache guard drops the package's
    cache whenever any of its sources changes."""

    _impl_class = _EntryCacheImpl


class InternalDispatcher(_LazyCacheDispatcher):
    """A kernel compiled without its Python entry: callable from compiled code only."""

    def __init__(self, py_func, locals=None, targetoptions=None):
        super().__init__(
            py_func, locals=locals, targetoptions=targetoptions, pipeline_class=_LinkOnlyCompiler
        )

    def enable_caching(self):
        self._cache = _LinkOnlyCache(self.py_func)

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


class KernelDispatcher(_LazyCacheDispatcher):
    """An entry point. A Python call compiles it whole (with machine code).
    A compiled caller (another kernel, a user's ``@njit`` code) links the
    entry itself when it is compiled or in the cache already, and otherwise
    its link-only twin, an :class:`InternalDispatcher` of the same function:
    the caller emits what it links itself, so the entry's machine code would
    be wasted."""

    def enable_caching(self):
        self._cache = _EntryCache(self.py_func)

    def _twin(self):
        twin = self.__dict__.get("_link_twin")
        if twin is None:
            options = dict(self.targetoptions)
            options["no_cpython_wrapper"] = True
            options["no_cfunc_wrapper"] = True
            twin = InternalDispatcher(self.py_func, locals=self.locals, targetoptions=options)
            self.__dict__["_link_twin"] = twin
        return twin

    def _have(self, args):
        """Whether the entry itself has ``args``, loading it from the cache if
        it is there (as numba's compile() would, short of compiling)."""
        if args in self.overloads:
            return True
        if isinstance(self._cache, NullCache):
            self.enable_caching()
        with global_compiler_lock:
            cres = self._cache.load_overload(args, self.targetctx)
            if cres is None:
                return False
            self._cache_hits[args] += 1
            self.targetctx.insert_user_function(cres.entry_point, cres.fndesc, [cres.library])
            self.add_overload(cres)
        return True

    def get_call_template(self, args, kws):
        _, folded = self._compiler.fold_argument_types(args, kws)
        if self._have(tuple(folded)):
            return super().get_call_template(args, kws)
        return self._twin().get_call_template(args, kws)

    def get_overload(self, sig):
        args, _ = normalize_signature(sig)
        if tuple(args) in self.overloads:
            return super().get_overload(sig)
        return self._twin().get_overload(sig)
