"""Collectives read from optimised HLO: kinds, async halves, group sizes, bytes sent."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from micar_jax.performance import collectives

# Lines in the form TPU programs print them (async starts, tiled layouts, iota groups).
HLO = """
ENTRY %main {
  %all-reduce-start = bf16[1024,512]{1,0:T(8,128)(2,1)} all-reduce-start(%fusion), channel_id=1, replica_groups={{0,2,4,6},{1,3,5,7}}, to_apply=%add
  %all-reduce-done = bf16[1024,512]{1,0:T(8,128)(2,1)} all-reduce-done(%all-reduce-start)
  %all-gather-start = (f32[16,64]{1,0}, f32[128,64]{1,0}) all-gather-start(%p), channel_id=2, replica_groups=[1,8]<=[8], dimensions={0}
  %all-gather-done = f32[128,64]{1,0} all-gather-done(%all-gather-start)
  %reduce-scatter = f32[32]{0} reduce-scatter(%x), channel_id=3, replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
  %collective-permute-start = (s32[100]{0}, s32[100]{0}, u32[], u32[]) collective-permute-start(%y), source_target_pairs={{0,1},{1,0}}
  ROOT %all-to-all = (bf16[4,8]{1,0}, bf16[4,8]{1,0}) all-to-all(%a, %b), replica_groups={{0,1}}
  %not-a-collective = f32[8]{0} add(%all-reduce-done, %all-reduce-done)
}
"""


def test_counts_each_collective_once_with_its_result_bytes():
  found = {c.kind: c for c in collectives.parse(HLO, num_devices=8)}
  assert list(found) == ["all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                         "collective-permute"]
  assert all(c.count == 1 for c in found.values())
  assert found["all-reduce"].bytes == 1024 * 512 * 2
  assert found["all-gather"].bytes == 128 * 64 * 4  # the gathered half of the start tuple
  assert found["reduce-scatter"].bytes == 32 * 4
  assert found["collective-permute"].bytes == 100 * 4  # scalar contexts dropped
  assert found["all-to-all"].bytes == 2 * 4 * 8 * 2


def test_bytes_sent_follow_ring_algorithms_over_the_group():
  found = {c.kind: c for c in collectives.parse(HLO, num_devices=8)}
  assert found["all-reduce"].sent == pytest.approx(2 * 3 / 4 * 1024 * 512 * 2)  # groups of 4
  assert found["all-gather"].sent == pytest.approx(7 / 8 * 128 * 64 * 4)  # iota [1,8]
  assert found["reduce-scatter"].sent == pytest.approx(3 * 32 * 4)  # iota [2,4]
  assert found["all-to-all"].sent == pytest.approx(1 / 2 * 128)
  assert found["collective-permute"].sent == 400


# TPU's form: mesh-axis groups, and one async all-gather (channel 7) repeated in the
# fusions that start, carry and finish it.
TPU_HLO = """
%start (p: bf16[1,64]) -> bf16[2,64] {
  %p = bf16[1,64]{1,0} parameter(0)
  ROOT %ag = bf16[2,64]{1,0:S(1)} all-gather(%p), channel_id=7, replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([4,2]T(1,0)) {'axis_0'}, dimensions={0}
}

%done (p: bf16[1,64]) -> bf16[2,64] {
  %p = bf16[1,64]{1,0} parameter(0)
  ROOT %ag = bf16[2,64]{1,0:S(1)} all-gather(%p), channel_id=7, replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([4,2]T(1,0)) {'axis_0'}, dimensions={0}
}

ENTRY %main (x: f32[32]) -> f32[32] {
  %x = f32[32]{0} parameter(0)
  ROOT %ar = f32[32]{0} all-reduce(%x), channel_id=8, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0','axis_1'}, to_apply=%add
}
"""


def test_tpu_mesh_groups_and_a_repeated_channel_count_once():
  found = {c.kind: c for c in collectives.parse(TPU_HLO, num_devices=16)}
  assert found["all-gather"].count == 1
  assert found["all-gather"].sent == pytest.approx(1 / 2 * 2 * 64 * 2)  # axis_0: groups of 2
  assert found["all-reduce"].sent == pytest.approx(2 * 7 / 8 * 32 * 4)  # both axes: 8


def test_a_compiled_data_parallel_gradient_has_one_all_reduce_of_the_weights():
  mesh = jax.make_mesh((8,), ("d",), devices=jax.devices()[:8])
  x = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P("d")))
  w = jax.ShapeDtypeStruct((32, 16), jnp.float32, sharding=NamedSharding(mesh, P()))
  grad = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))), out_shardings=w.sharding)
  found = collectives.parse(grad.lower(w, x).compile().as_text(), num_devices=8)
  assert [(c.kind, c.count, c.bytes) for c in found] == [("all-reduce", 1, 32 * 16 * 4)]
  assert found[0].sent == pytest.approx(2 * 7 / 8 * 32 * 16 * 4)


def test_a_program_without_collectives_has_none():
  one = jax.jit(lambda x: x * 2).lower(jnp.ones(4)).compile()
  assert collectives.parse(one.as_text(), num_devices=1) == []
