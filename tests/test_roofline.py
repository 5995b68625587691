"""The roofline estimate: the slowest resource sets the step, unknown figures stay unknown."""

import pytest

from micar_jax.performance import chips, collectives, roofline

V5P = chips.TPU_GENERATIONS["v5p"]


def test_the_slowest_resource_sets_the_step_and_the_throughput():
  sent = [collectives.Collective("all-reduce", 3, 1e9, 6e9)]
  e = roofline.estimate(V5P, num_devices=4, xla_flops=459e12 * 0.010, xla_bytes=2765e9 * 0.004,
                        found=sent, batch_size=32, model_flops=4 * 459e12 * 0.005)
  assert e["compute_s"] == pytest.approx(0.010)
  assert e["memory_s"] == pytest.approx(0.004)
  assert e["network_s"] == pytest.approx(6e9 / 600e9)
  assert e["step_s"] == pytest.approx(0.010) and e["bound"] == "compute"
  assert e["images_per_s"] == pytest.approx(3200)
  assert e["mfu"] == pytest.approx(0.5)


def test_network_bound_when_collectives_dominate():
  sent = [collectives.Collective("all-gather", 1, 1e10, 1.2e10)]
  e = roofline.estimate(V5P, 8, 1e9, 1e9, sent, 8, 1e9)
  assert e["bound"] == "network" and e["step_s"] == pytest.approx(1.2e10 / 600e9)


def test_a_chip_without_speed_figures_gives_no_estimate():
  e = roofline.estimate(chips.cpu_chip(8), 8, 1e9, 1e9, [], 8, 1e9)
  assert e["compute_s"] is None and e["network_s"] == 0.0
  assert (e["step_s"], e["bound"], e["images_per_s"], e["mfu"]) == (None, None, None, None)


def test_compute_counts_at_least_the_model_flops_so_mfu_stays_at_most_one():
  e = roofline.estimate(V5P, 1, xla_flops=0.9e12, xla_bytes=1.0, found=[], batch_size=1,
                        model_flops=1e12)
  assert e["compute_s"] == pytest.approx(1e12 / 459e12) and e["mfu"] == pytest.approx(1.0)
