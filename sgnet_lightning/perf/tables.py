"""Reading a report: the ratios of one model's figures, Markdown tables, and progress lines.

The tables show throughput in patches/s, inference in ms per volume, memory in GiB and ratios as
plain factors (suite / seed way, end-to-end / model-only); a figure not measured shows as ``-``.
Progress lines go to stderr, so stdout holds the tables alone.
"""

from __future__ import annotations

import sys
from typing import Any


def log(message: str) -> None:
    """One progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def rate(entry: dict, section: str, setting: str) -> float | None:
    """patches/s of ``entry[section][setting]``; None where it was not measured."""
    return entry.get(section, {}).get(setting, {}).get("patches_per_s")


def inference_ms(entry: dict, prefix: str) -> float | None:
    """ms per volume of the first inference row whose key starts with ``prefix`` (``seed_way``, ``suite_sw``)."""
    return next((v["ms_per_volume"] for k, v in entry.get("inference", {}).items() if k.startswith(prefix)), None)


def ratios(entry: dict) -> dict[str, float | None]:
    """suite / seed way and end-to-end / model-only ratios of one model's entry."""
    seed_model, suite_model = rate(entry, "model_only", "seed_way"), rate(entry, "model_only", "suite")
    seed_e2e, suite_e2e = rate(entry, "end_to_end", "seed_way"), rate(entry, "end_to_end", "suite")
    return {
        "model_only_suite_over_seed": _ratio(suite_model, seed_model),
        "end_to_end_suite_over_seed": _ratio(suite_e2e, seed_e2e),
        "end_to_end_over_model_only_seed": _ratio(seed_e2e, seed_model),
        "end_to_end_over_model_only_suite": _ratio(suite_e2e, suite_model),
        "end_to_end_device_over_model_only_suite": _ratio(rate(entry, "end_to_end", "suite_device"), suite_model),
        "inference_speedup_suite_over_seed": _ratio(inference_ms(entry, "seed_way"), inference_ms(entry, "suite_sw")),
    }


def _fmt(value, digits=1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if value < 10_000 else f"{value:,.0f}"
    return str(value)


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of the report: rates in patches/s, inference in ms per volume."""
    rows = ["| model | model-only seed | model-only suite | suite/seed | end-to-end seed | end-to-end suite "
            "| end-to-end suite, device loader | e2e/model seed | e2e/model suite | e2e device/model suite "
            "| infer seed ms | infer suite ms | infer speed-up | peak dev GiB | peak RSS GiB |",
            "|" + " --- |" * 15]
    for name, entry in report["models"].items():
        r = entry["ratios"]
        suite_model = entry.get("model_only", {}).get("suite", {})
        rss = max((m.get("peak_host_rss_gib") or 0 for section in ("model_only", "end_to_end")
                   for m in entry.get(section, {}).values()), default=None)
        rows.append("| " + " | ".join([
            name, _fmt(rate(entry, "model_only", "seed_way")), _fmt(rate(entry, "model_only", "suite")),
            _fmt(r["model_only_suite_over_seed"], 2), _fmt(rate(entry, "end_to_end", "seed_way")),
            _fmt(rate(entry, "end_to_end", "suite")), _fmt(rate(entry, "end_to_end", "suite_device")),
            _fmt(r["end_to_end_over_model_only_seed"], 2), _fmt(r["end_to_end_over_model_only_suite"], 2),
            _fmt(r["end_to_end_device_over_model_only_suite"], 2), _fmt(inference_ms(entry, "seed_way"), 0),
            _fmt(inference_ms(entry, "suite_sw"), 0),
            _fmt(r["inference_speedup_suite_over_seed"], 2), _fmt(suite_model.get("peak_device_gib"), 2),
            _fmt(rss or None, 2),
        ]) + " |")
    return "\n".join(rows)


def format_loader_table(loader: dict[str, Any]) -> str:
    """A Markdown table of the loader comparison (patches/s)."""
    rows = ["| queue settings | batch | DataModule queue | naive TorchIO queue | DataModule / naive "
            "| device sampler | device sampler / naive |", "|" + " --- |" * 7]
    for name, entry in loader.items():
        if name == "suite_over_seed_naive":
            continue
        q = entry["queue"]
        rows.append("| " + " | ".join([
            f"{name}: {q['samples_per_volume']} per volume, queue {q['queue_length']}, {q['num_workers']} workers",
            str(entry["batch_size"]), _fmt(entry["datamodule"]["patches_per_s"]),
            _fmt(entry.get("naive", {}).get("patches_per_s")), _fmt(entry.get("datamodule_over_naive"), 1),
            _fmt(entry["device_sampler"]["patches_per_s"]), _fmt(entry.get("device_sampler_over_naive"), 1),
        ]) + " |")
    if "suite_over_seed_naive" in loader:
        ratios = loader["suite_over_seed_naive"]
        rows.append(f"\nsuite against the seed's data path (naive, one crop per load): DataModule "
                    f"{ratios['datamodule']:.1f}x, device sampler {ratios['device_sampler']:.1f}x")
    return "\n".join(rows)
