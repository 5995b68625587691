"""A roofline ESTIMATE of a compiled step's time from XLA's counts and the chip table.

The step cannot run faster than the slowest of three resources, each used at
its peak rate for the whole step:

  compute  the larger of XLA's flops per device and the model's FLOPs per
           device (XLA skips some backward work the 3 x forward count
           assumes) / peak bf16 FLOP/s, so MFU stays <= 1
  memory   XLA's bytes accessed per device / HBM bandwidth
  network  estimated bytes each device sends (micar_jax.performance.collectives) /
           one-way inter-chip bandwidth of the chip (all its links)

so the estimate is max(compute, memory, network): a lower bound on the real
step time that ignores latency, imperfect overlap and kernel efficiency. Every
figure here is an estimate and is labelled so in the output.
"""

from typing import Any

from micar_jax.performance import chips, collectives

NOTE = ("estimates: roofline lower bounds, max(FLOPs / peak, XLA bytes accessed / HBM "
        "bandwidth, collective bytes sent / ICI bandwidth), from the chip table "
        "(micar_jax/performance/chips.py); real steps are slower")


def _ratio(amount: float, rate: float | None) -> float | None:
  return amount / rate if rate else None


def estimate(chip: chips.Chip, num_devices: int, xla_flops: float, xla_bytes: float,
             found: list[collectives.Collective], batch_size: int,
             model_flops: float) -> dict[str, Any]:
  """Step time, images/s and MFU implied by the slowest resource.

  Args:
    chip: the chip's figures; a missing figure leaves its term (and the
      estimate, when it is the compute or memory term) unknown (None).
    num_devices: devices running the step.
    xla_flops: XLA's flops per device per step.
    xla_bytes: XLA's bytes accessed per device per step.
    found: the step's collectives (per device).
    batch_size: images per step (global).
    model_flops: the model's FLOPs per step (global, micar_jax.models.flops).

  Returns:
    {compute_s, memory_s, network_s, step_s, bound, images_per_s, mfu}, with
    None where the chip table lacks the figure the term needs.
  """
  peak = chip.peak_tflops * 1e12 if chip.peak_tflops else None
  sent = sum(c.sent for c in found)
  terms = {
      "compute_s": _ratio(max(xla_flops, model_flops / num_devices), peak),
      "memory_s": _ratio(xla_bytes, chip.hbm_gbps * 1e9 if chip.hbm_gbps else None),
      # Without collectives the network costs nothing, whatever the chip table says.
      "network_s": _ratio(sent, chip.ici_gbps * 1e9 if chip.ici_gbps else None) if sent else 0.0,
  }
  known = {k: v for k, v in terms.items() if v is not None}
  step = max(known.values()) if len(known) == len(terms) else None
  return {
      **terms,
      "step_s": step,
      "bound": max(known, key=known.get)[:-2] if step else None,
      "images_per_s": batch_size / step if step else None,
      "mfu": model_flops / (step * peak * num_devices) if step and peak else None,
  }
