"""Every Python kind of the registry has a simulator source; only registers can get stuck."""

from __future__ import annotations

from models.kinds import PYTHON_KINDS
from sensors_sim.sources import BUILTIN


def test_every_python_kind_has_a_source_in_registry_order() -> None:
    assert tuple(BUILTIN) == PYTHON_KINDS


def test_the_stuck_fault_freezes_the_register_the_engine_judges() -> None:
    from kinds.energy import KIND as ENERGY
    from kinds.water import KIND as WATER

    registers = {name: source.register for name, source in BUILTIN.items()}
    assert registers == {"water": WATER.engine.unit_field, "energy": ENERGY.engine.unit_field,
                         "traffic": None, "shuttle": None}
