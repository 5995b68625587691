"""The benchmark's MoE sweep settings: one dispatch per variant, the mesh for expert_parallel."""

import pytest

from micar_jax.config import defaults
from micar_jax.performance import bench_sweeps


@pytest.mark.parametrize("variant, impl, capacity", [
    ("sort", "sort", -1.0), ("sort_pallas", "sort", -1.0),
    ("einsum", "einsum", 1.25), ("expert_parallel", "expert_parallel", 1.25),
])
def test_variant_sets_dispatch_experts_and_capacity(variant, impl, capacity):
  c = bench_sweeps.variant_config(defaults.base_config(), variant, 64, 1.25)
  assert (c.model.moe_impl, c.model.num_experts, c.model.capacity_factor) == (impl, 64, capacity)


def test_expert_parallel_spreads_experts_over_devices_that_divide_them():
  config = defaults.base_config()
  config.mesh.num_devices = 8  # conftest simulates 8 CPU devices
  assert bench_sweeps.variant_config(config, "expert_parallel", 64, 1.25).mesh.expert == 8
  assert bench_sweeps.variant_config(config, "expert_parallel", 4, 1.25).mesh.expert == 4
  assert bench_sweeps.variant_config(config, "sort", 64, 1.25).mesh.expert == 1


def test_pallas_lowering_is_skipped_off_gpu():
  assert bench_sweeps.skip_reason("sort_pallas") == "GPU only (backend: cpu)"
  assert bench_sweeps.skip_reason("einsum") is None


def test_sweep_times_each_expert_count_and_skips_what_cannot_run():
  config = defaults.tiny(defaults.base_config())
  config.data.text_seq_len = 8
  config.mesh.num_devices = 1
  config.model.vocab_size = 64
  out, published = {}, []
  bench_sweeps.moe_sweep(config, ("sort_pallas", "sort"), (2, 4), 1.25, (1, 0), out,
                         lambda: published.append(len(out)))
  assert out["sort_pallas"] == {"skipped": "GPU only (backend: cpu)"}
  for count in (2, 4):
    figures = out["sort"][f"E={count}"]
    assert figures["step_ms"] > 0 and figures["dropped_fraction"] == 0.0  # sort is dropless
  assert out["sort"]["step_ratio"] == pytest.approx(
      out["sort"]["E=4"]["step_ms"] / out["sort"]["E=2"]["step_ms"])
  assert len(published) == 4  # after the skip, each count, and the ratio
