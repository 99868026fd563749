"""examples/report-protocol.yaml: the report's protocol (the one whose force error rose
while its energy error fell), loaded through smallcell.config, carries the report's
settings."""

from __future__ import annotations

from pathlib import Path

from smallcell.config import load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "report-protocol.yaml"


def test_report_protocol_example_has_the_reports_settings() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.source == EXAMPLE.resolve()
    assert cfg["species"] == ["Pb"]
    assert cfg["structure"]["lattice"] == "fcc" and cfg["structure"]["a"] == 4.95
    assert cfg["structure"]["cell"] == [1, 1, 1] and cfg["structure"]["displacement"] == 0.1
    assert cfg["grid"]["temperatures"] == [300.0] and cfg["grid"]["pressures"] == [1.0]
    assert cfg["md"]["ensemble"] == "npt" and cfg["md"]["timestep"] == 2.0
    assert cfg["extrapolation"] == {"gamma_save": 2.1, "gamma_break": 10.0}
    assert cfg["select"]["policy"] == "threshold"
    assert cfg["select"]["max_selected"] is None  # every configuration in the band
    assert cfg["sample"]["size"] == 200 and cfg["sample"]["gamma_min"] == 0.1
    tr = cfg["trainer"]
    assert tr["level"] == 8 and tr["warm_start"] is False and tr["max_iter"] == 100
    assert tr["restarts"] == 0 and tr["tolerance"] <= 1e-9  # every fit runs its 100
    assert cfg["engines"] == {"explorer": "embedded", "labeler": "eam", "trainer": "motep",
                              "scheduler": "local"}
    assert cfg["initial"]["source"] == "generate"
    assert cfg["run"]["converged_iterations"] == 1
