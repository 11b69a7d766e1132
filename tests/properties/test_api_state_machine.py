"""A hypothesis state machine over the whole Python API, with a shadow of every byte.

Each rule is one thing a user does (api.md names the section, each ``World.op_*``
docstring in ``tests/shadow_world.py`` the call and its contract): mmap in every
kind, protection and THP, fork, CPU reads and writes across pages and VMAs,
populate, swap-out, migrations to and from the device and eviction, injected
allocation failures, ``me.migrate_vma`` with sound, raising, re-entrant and
bogus-``dst`` drivers (Python and ``@njit``), pins, page locks, isolation, a
driver's own pages, and bad arguments to every entry point.

After every rule, ``m.check()`` passes and every byte the rule could have changed
(in every process that may share the frames) equals the shadow; every
``FULL_EVERY`` steps all mapped bytes are compared, and at the end the holds are
released and every frame must be free again or held by a mapping. Every profile
the engine builds runs (``modern`` is skipped while ``Machine`` refuses it).

Budget: about 20 s a profile on the 2-core CI machine. ``MIGENGINE_SM_SCALE``
multiplies the number of examples (``MIGENGINE_SM_SCALE=10`` for a longer hunt).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.shadow_world import World

SCALE = float(os.environ.get("MIGENGINE_SM_SCALE", "1"))
FULL_EVERY = 5  # steps between full compares of every mapped byte
RAM_PAGES = 2048  # 64-byte pages: 4 THP extents of RAM, cheap to copy and compare
DEVICE_PAGES = 256


class DataDraw:
    """A rule's arguments, drawn from hypothesis (so a failure shrinks)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def chance(self, p: float) -> bool:
        return self.data.draw(st.integers(0, 999)) < p * 1000


class ApiStateMachine(RuleBasedStateMachine):
    """The whole Python API against a shadow of every byte (hmm-v25)."""

    PROFILE = "hmm-v25"

    def __init__(self) -> None:
        super().__init__()
        self.world = World(self.PROFILE, ram=RAM_PAGES, device=DEVICE_PAGES, max_vmas=4)
        self.steps = 0
        self.failed = False

    def _do(self, name: str, data: st.DataObject) -> None:
        try:
            self.world.step(getattr(self.world, f"op_{name}"), DataDraw(data))
        except BaseException:
            self.failed = True  # teardown then leaves the broken machine alone
            raise

    @initialize(data=st.data())
    def two_mappings(self, data: st.DataObject) -> None:
        """Two mappings to act on from the first rule."""
        self._do("mmap", data)
        self._do("mmap", data)

    # -------------------------------------------------------------- address spaces
    @rule(data=st.data())
    def mmap(self, data: st.DataObject) -> None:
        """p.mmap (api.md "Processes and address spaces")."""
        self._do("mmap", data)

    @precondition(lambda self: len(self.world.procs) < self.world.max_procs)
    @rule(data=st.data())
    def new_process(self, data: st.DataObject) -> None:
        """m.new_process()."""
        self._do("new_process", data)

    @precondition(lambda self: len(self.world.procs) < self.world.max_procs)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        """p.fork(): copy-on-write anonymous memory, shared shmem and file pages."""
        self._do("fork", data)

    # -------------------------------------------------------------- the CPU
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        """p.read: a CPU load, across pages and VMAs."""
        self._do("read", data)

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        """p.write: a CPU store, across pages and VMAs."""
        self._do("write", data)

    @rule(data=st.data())
    def populate(self, data: st.DataObject) -> None:
        """p.populate (MAP_POPULATE)."""
        self._do("populate", data)

    @rule(data=st.data())
    def swap_out(self, data: st.DataObject) -> None:
        """p.swap_out (shrink_page_list + try_to_unmap)."""
        self._do("swap_out", data)

    # -------------------------------------------------------------- the device
    @rule(data=st.data())
    def to_device(self, data: st.DataObject) -> None:
        """m.device.migrate_to_device (api.md "The device")."""
        self._do("to_device", data)

    @rule(data=st.data())
    def to_system(self, data: st.DataObject) -> None:
        """m.device.migrate_to_system."""
        self._do("to_system", data)

    @rule(data=st.data())
    def evict(self, data: st.DataObject) -> None:
        """m.device.evict()."""
        self._do("evict", data)

    @rule(data=st.data())
    def fail_alloc(self, data: st.DataObject) -> None:
        """m.device.fail_alloc(n): failure injection."""
        self._do("fail_alloc", data)

    # -------------------------------------------------------------- migrate_vma
    @rule(data=st.data())
    def migrate_vma(self, data: st.DataObject) -> None:
        """me.migrate_vma with a Python or @njit driver, sound or not (api.md
        "migrate_vma: the seed's entry point")."""
        self._do("migrate_vma", data)

    # -------------------------------------------------------------- others acting on pages
    @rule(data=st.data())
    def pin(self, data: st.DataObject) -> None:
        """m.pin / m.unpin (get_user_pages)."""
        self._do("pin", data)

    @rule(data=st.data())
    def lock(self, data: st.DataObject) -> None:
        """m.lock_page / m.unlock_page (another thread holds the page lock)."""
        self._do("lock", data)

    @rule(data=st.data())
    def isolate(self, data: st.DataObject) -> None:
        """m.isolate_lru_page / m.putback_lru_page (another isolator)."""
        self._do("isolate", data)

    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        """m.lru_add_drain_all()."""
        self._do("drain", data)

    @rule(data=st.data())
    def driver_page(self, data: st.DataObject) -> None:
        """m.alloc_page, m.copy_page, m.frame, m.put_page (a driver's helpers)."""
        self._do("driver_page", data)

    @rule(data=st.data())
    def bad_input(self, data: st.DataObject) -> None:
        """A bad argument to any entry point: the documented exception, nothing changed."""
        self._do("bad_input", data)

    # -------------------------------------------------------------- checks
    @invariant()
    def all_bytes(self) -> None:
        """Every mapped byte of every process, every FULL_EVERY steps (step() has
        compared the bytes each rule could change, and run m.check())."""
        self.steps += 1
        if self.steps % FULL_EVERY == 0:
            try:
                self.world.verify_all()
            except BaseException:
                self.failed = True
                raise

    def teardown(self) -> None:
        """Release every hold and account for every frame; read every byte back."""
        if self.failed:  # the failure is reported; more checks would only add noise
            return
        w = self.world
        w.verify_all()
        w.quiesce()
        w.account()
        w.read_everything()
        w.m.check()


class ApiStateMachineSeed(ApiStateMachine):
    PROFILE = "seed"


class ApiStateMachineModern(ApiStateMachine):
    PROFILE = "modern"


RUNS = settings(
    deadline=None,
    max_examples=max(1, round(150 * SCALE)),
    stateful_step_count=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestApiHmmV25 = ApiStateMachine.TestCase
TestApiHmmV25.settings = RUNS
TestApiSeed = ApiStateMachineSeed.TestCase
TestApiSeed.settings = RUNS
TestApiModern = ApiStateMachineModern.TestCase
TestApiModern.settings = RUNS
