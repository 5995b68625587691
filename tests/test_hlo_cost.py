"""The per-op estimate read from optimised HLO: a hand-built program whose every figure is
worked out below, and a real program compiled on CPU."""

import jax
import jax.numpy as jnp
import pytest

from micar_jax.performance import chips, hlo_cost

# 1 TFLOP/s, 100 GB/s HBM, 10 GB/s ICI, 2 us per collective.
CHIP = chips.Chip("test", ("test",), peak_tflops=1.0, hbm_gbps=100.0, ici_gbps=10.0,
                  collective_latency_s=2e-6)
PEAK, HBM, ICI, LATENCY = 1e12, 1e11, 1e10, 2e-6

# A dot, a copy-start/copy-done prefetch of a kernel into on-chip memory (S(1)), a fusion
# of a convolution with that kernel, a while loop of 3 trips around a dot, and an
# all-reduce over groups of 4.
HLO = """
HloModule hand_built, is_scheduled=true

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%fused_conv (p0: bf16[1,8,8,4], p1: bf16[3,3,4,8]) -> bf16[1,8,8,8] {
  %p0 = bf16[1,8,8,4]{3,2,1,0} parameter(0)
  %p1 = bf16[3,3,4,8]{3,2,1,0:S(1)} parameter(1)
  %conv = bf16[1,8,8,8]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  %zero = bf16[] constant(0)
  %zeros = bf16[1,8,8,8]{3,2,1,0} broadcast(%zero), dimensions={}
  ROOT %relu = bf16[1,8,8,8]{3,2,1,0} maximum(%conv, %zeros)
}

%body (state: (s32[], f32[16,32], f32[32,32])) -> (s32[], f32[16,32], f32[32,32]) {
  %state = (s32[], f32[16,32]{1,0}, /*index=2*/f32[32,32]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %x = f32[16,32]{1,0} get-tuple-element(%state), index=1
  %w = f32[32,32]{1,0} get-tuple-element(%state), index=2
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %y = f32[16,32]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/while/body/decoder/mlp/dot_general"}
  ROOT %out = (s32[], f32[16,32]{1,0}, f32[32,32]{1,0}) tuple(%next, %y, %w)
}

%cond (state: (s32[], f32[16,32], f32[32,32])) -> pred[] {
  %state = (s32[], f32[16,32]{1,0}, f32[32,32]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[16,32], w: f32[32,32], img: bf16[1,8,8,4], k: bf16[3,3,4,8]) -> (f32[16,32], bf16[1,8,8,8]) {
  %a = f32[16,32]{1,0} parameter(0)
  %w = f32[32,32]{1,0} parameter(1)
  %img = bf16[1,8,8,4]{3,2,1,0} parameter(2)
  %k = bf16[3,3,4,8]{3,2,1,0} parameter(3)
  %prefetch = (bf16[3,3,4,8]{3,2,1,0:S(1)}, bf16[3,3,4,8]{3,2,1,0}, u32[]{:S(2)}) copy-start(%k)
  %h = f32[16,32]{1,0} dot(%a, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/jvp(Model)/Model.encode/encoder/proj/dot_general"}
  %k-vmem = bf16[3,3,4,8]{3,2,1,0:S(1)} copy-done(%prefetch)
  %conv-fusion = bf16[1,8,8,8]{3,2,1,0} fusion(%img, %k-vmem), kind=kOutput, calls=%fused_conv, metadata={op_name="jit(step)/jvp(Model)/Model.encode/encoder/conv/conv_general_dilated"}
  %zero = s32[] constant(0)
  %init = (s32[], f32[16,32]{1,0}, f32[32,32]{1,0}) tuple(%zero, %h, %w)
  %loop = (s32[], f32[16,32]{1,0}, f32[32,32]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %y = f32[16,32]{1,0} get-tuple-element(%loop), index=1
  %ar = f32[16,32]{1,0} all-reduce(%y), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add, metadata={op_name="jit(step)/transpose(jvp(Model))/decoder/bn/psum"}
  ROOT %out = (f32[16,32]{1,0}, bf16[1,8,8,8]{3,2,1,0}) tuple(%ar, %conv-fusion)
}
"""

# Worked out by hand.
DOT_FLOPS = 2 * 16 * 32 * 32  # result elements x contracting size x 2
DOT_BYTES = 4 * (16 * 32 + 32 * 32 + 16 * 32)  # both operands and the result, f32
DOT_S = max(DOT_FLOPS / PEAK, DOT_BYTES / HBM)  # memory-bound: 81.92 ns
# 2 x 512 result elements x 3x3 window x 4 input features, + 512 for the maximum.
CONV_FLOPS = 2 * (8 * 8 * 8) * 9 * 4 + 8 * 8 * 8
CONV_BYTES = 2 * (8 * 8 * 4) + 2 * (8 * 8 * 8)  # image and result; the kernel is in S(1)
CONV_S = max(CONV_FLOPS / PEAK, CONV_BYTES / HBM)  # compute-bound: 37.376 ns
COPY_BYTES = 2 * 3 * 3 * 4 * 8  # read from HBM; its destination is on chip
SCALAR_S = 1 / PEAK  # a scalar add or compare: 1 FLOP, no HBM bytes (scalars)
AR_BYTES = 4 * 16 * 32
AR_SENT = 2 * 3 / 4 * AR_BYTES  # ring all-reduce over groups of 4
AR_S = LATENCY + AR_SENT / ICI  # latency-bound: 2 us + 0.31 us
LOOP_S = 3 * (DOT_S + SCALAR_S) + 4 * SCALAR_S  # the condition runs 4 times
STEP_S = DOT_S + CONV_S + LOOP_S + AR_S  # the prefetch hides behind the first dot
FLOPS = DOT_FLOPS + CONV_FLOPS + 3 * (DOT_FLOPS + 1) + 4
HBM_BYTES = DOT_BYTES + COPY_BYTES + CONV_BYTES + 3 * DOT_BYTES + 2 * AR_BYTES


def test_hand_built_program_costs_what_the_hand_says():
  e = hlo_cost.estimate(HLO, CHIP, num_devices=8)
  assert e.flops == FLOPS
  assert e.hbm_bytes == HBM_BYTES
  assert e.step_s == pytest.approx(STEP_S, rel=1e-12)
  assert e.unknown_trip_counts == []
  rows = {r.name: r for r in e.rows}
  assert set(rows) == {"prefetch", "h", "conv-fusion", "next", "y", "lt", "ar"}
  assert (rows["y"].count, rows["y"].flops, rows["y"].bound) == (3, 3 * DOT_FLOPS, "memory")
  assert rows["lt"].count == 4
  assert (rows["conv-fusion"].hbm_bytes, rows["conv-fusion"].bound) == (CONV_BYTES, "compute")
  assert (rows["ar"].time_s, rows["ar"].bound) == (pytest.approx(AR_S), "latency")
  assert rows["prefetch"].time_s == 0.0  # fully hidden behind the dot
  assert sum(r.time_s for r in e.rows) == pytest.approx(e.step_s)


def test_regions_are_module_paths_and_top_ranks_them_by_time():
  e = hlo_cost.estimate(HLO, CHIP, num_devices=8)
  top = e.top(3)
  assert [g["region"] for g in top] == ["decoder/bn", "decoder/mlp", "encoder/proj"]
  assert top[0]["share"] == pytest.approx(AR_S / STEP_S)
  assert top[1]["ops"] == 3 and top[1]["time_s"] == pytest.approx(3 * DOT_S)
  summary = e.summary(batch_size=16, model_flops=8 * 1e5, num_devices=8)
  assert summary["images_per_s"] == pytest.approx(16 / STEP_S)
  assert summary["mfu"] == pytest.approx(1e5 / (STEP_S * PEAK))
  assert summary["bound"] == "latency"
  assert summary["by_bound_s"]["memory"] == pytest.approx(4 * DOT_S)


def test_a_loop_without_a_known_trip_count_counts_once_and_is_named():
  e = hlo_cost.estimate(HLO.replace(', backend_config={"known_trip_count":{"n":"3"}}', ""),
                        CHIP, 8)
  assert e.unknown_trip_counts == ["loop"]
  assert e.flops == DOT_FLOPS + CONV_FLOPS + (DOT_FLOPS + 1) + 1


def test_a_copy_waited_for_at_once_adds_its_whole_time():
  done = "  %k-vmem = bf16[3,3,4,8]{3,2,1,0:S(1)} copy-done(%prefetch)\n"
  early = HLO.replace(done, "").replace("copy-start(%k)\n", "copy-start(%k)\n" + done)
  e = hlo_cost.estimate(early, CHIP, 8)
  assert e.step_s == pytest.approx(STEP_S + COPY_BYTES / HBM, rel=1e-12)
  assert next(r for r in e.rows if r.name == "prefetch").bound == "memory"


def test_a_chip_without_figures_leaves_times_unknown_and_ranks_by_bytes():
  e = hlo_cost.estimate(HLO, chips.cpu_chip(8), 8)
  assert e.step_s is None and e.flops == FLOPS and e.hbm_bytes == HBM_BYTES
  top = e.top(2)
  assert [g["region"] for g in top] == ["decoder/mlp", "encoder/proj"]  # 24576 and 8192 B
  assert top[0]["time_s"] is None and top[0]["bound"] is None
  assert e.summary(16, 1e5, 8)["mfu"] is None


# TPU's form of an async all-gather: fusions holding AsyncCollectiveStart/Done, the
# collective repeated (same channel id) in a fusion that runs while it is in flight.
TPU_ASYNC = """
%start_body (p: bf16[1,64]) -> (bf16[1,64], bf16[2,64], u32[]) {
  %p = bf16[1,64]{1,0} parameter(0)
  %ag = bf16[2,64]{1,0:S(1)} all-gather(%p), channel_id=7, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}, dimensions={0}
  ROOT %cc = (bf16[1,64]{1,0:S(1)}, bf16[2,64]{1,0:S(1)}, u32[]{:S(2)}) custom-call(%ag), custom_call_target="AsyncCollectiveStart"
}

%busy_body (p: bf16[1,64], q: f32[1024]) -> f32[1024] {
  %p = bf16[1,64]{1,0} parameter(0)
  %q = f32[1024]{0} parameter(1)
  %ag = bf16[2,64]{1,0:S(1)} all-gather(%p), channel_id=7, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}, dimensions={0}
  ROOT %e = f32[1024]{0} exponential(%q)
}

%done_body (p: bf16[1,64]) -> bf16[2,64] {
  %p = bf16[1,64]{1,0} parameter(0)
  %ag = bf16[2,64]{1,0:S(1)} all-gather(%p), channel_id=7, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}, dimensions={0}
  ROOT %cc = bf16[2,64]{1,0:S(1)} custom-call(%ag), custom_call_target="AsyncCollectiveDone"
}

ENTRY %main (x: bf16[1,64], q: f32[1024]) -> (bf16[2,64], f32[1024]) {
  %x = bf16[1,64]{1,0} parameter(0)
  %q = f32[1024]{0} parameter(1)
  %start = (bf16[1,64]{1,0:S(1)}, bf16[2,64]{1,0:S(1)}, u32[]{:S(2)}) fusion(%x), kind=kCustom, calls=%start_body
  %busy = f32[1024]{0} fusion(%x, %q), kind=kLoop, calls=%busy_body
  %done = bf16[2,64]{1,0:S(1)} fusion(%x), kind=kCustom, calls=%done_body
  ROOT %t = (bf16[2,64]{1,0:S(1)}, f32[1024]{0}) tuple(%done, %busy)
}
"""


def test_a_tpu_async_collective_is_costed_once_and_overlaps_the_work_between():
  e = hlo_cost.estimate(TPU_ASYNC, CHIP, 8)
  rows = {r.name: r for r in e.rows}
  busy_s = max(1024 / PEAK, (2 * 64 + 2 * 4 * 1024) / HBM)  # its own operands and result
  # Group of 2 (axis_0): sends (2-1)/2 of the 256-byte gathered array.
  gather_s = LATENCY + 0.5 * 2 * 2 * 64 / ICI
  start_s = 2 * 64 / HBM  # reads its operand; writes on chip
  assert rows["busy"].time_s == pytest.approx(busy_s) and rows["busy"].bound == "memory"
  assert rows["start"].bound == "latency"
  assert e.step_s == pytest.approx(start_s + max(busy_s, gather_s) + 2 * 64 / HBM)
  assert sum(r.time_s for r in e.rows) == pytest.approx(e.step_s)


# TPU's forms: ragged_dot's weight gradient as a masked conv whose input is dilated by
# the window (one tap in 8 is real), and an async slice into on-chip memory.
TPU_FORMS = """
ENTRY %main (a: bf16[8,96,16], k: bf16[8,96,32], w: f32[192,64]) -> (bf16[8,16,32], f32[48,64]) {
  %a = bf16[8,96,16]{2,1,0} parameter(0)
  %k = bf16[8,96,32]{2,1,0} parameter(1)
  %w = f32[192,64]{1,0} parameter(2)
  %conv = bf16[8,16,32]{2,1,0:S(1)} convolution(%a, %k), window={size=8 stride=7 lhs_dilate=8}, dim_labels=0fb_0io->0bf
  %ss = ((f32[192,64]{1,0}), f32[48,64]{1,0:S(1)}, s32[]{:S(2)}) slice-start(%w), slice={[0:48], [0:64]}
  %sd = f32[48,64]{1,0:S(1)} slice-done(%ss)
  ROOT %t = (bf16[8,16,32]{2,1,0:S(1)}, f32[48,64]{1,0:S(1)}) tuple(%conv, %sd)
}
"""


def test_dilated_taps_and_async_slices_count_what_they_touch():
  rows = {r.name: r for r in hlo_cost.estimate(TPU_FORMS, CHIP, 1).rows}
  # Per expert 96 rows x 16 x 32: the dense work, not 8x it.
  assert rows["conv"].flops == 2 * (8 * 16 * 32) * 96
  assert rows["ss"].hbm_bytes == 4 * 48 * 64  # the slice read, not the whole 192 rows


# GPU's library calls: a cuBLAS gemm and a cuDNN convolution, each also returning a
# scratch buffer that is not traffic.
GPU = """
ENTRY %main (a: bf16[392,32], b: bf16[32,24], x: bf16[8,16,16,4], k: bf16[8,3,3,4]) -> (bf16[392,24], bf16[8,16,16,8]) {
  %a = bf16[392,32]{1,0} parameter(0)
  %b = bf16[32,24]{1,0} parameter(1)
  %x = bf16[8,16,16,4]{3,2,1,0} parameter(2)
  %k = bf16[8,3,3,4]{3,2,1,0} parameter(3)
  %gemm = (bf16[392,24]{1,0}, s8[4194304]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}
  %conv = (bf16[8,16,16,8]{3,2,1,0}, u8[0]{0}) custom-call(%x, %k), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %y = bf16[392,24]{1,0} get-tuple-element(%gemm), index=0
  %z = bf16[8,16,16,8]{3,2,1,0} get-tuple-element(%conv), index=0
  ROOT %t = (bf16[392,24]{1,0}, bf16[8,16,16,8]{3,2,1,0}) tuple(%y, %z)
}
"""


def test_gpu_library_calls_count_their_flops_and_not_their_scratch():
  rows = {r.name: r for r in hlo_cost.estimate(GPU, CHIP, 1).rows}
  assert rows["gemm"].flops == 2 * 392 * 24 * 32
  assert rows["gemm"].hbm_bytes == 2 * (392 * 32 + 32 * 24 + 392 * 24)
  assert rows["conv"].flops == 2 * (8 * 16 * 16 * 8) * 9 * 4
  assert rows["conv"].hbm_bytes == 2 * (8 * 16 * 16 * 4 + 8 * 3 * 3 * 4 + 8 * 16 * 16 * 8)


# The backward calls of the same convolution: dx from (dy, w), dw from (x, dy); their
# dim_labels still describe the forward conv.
GPU_BACKWARD = """
ENTRY %main (x: bf16[8,16,16,4], k: bf16[8,3,3,4], dy: bf16[8,16,16,8]) -> (bf16[8,16,16,4], bf16[8,3,3,4]) {
  %x = bf16[8,16,16,4]{3,2,1,0} parameter(0)
  %k = bf16[8,3,3,4]{3,2,1,0} parameter(1)
  %dy = bf16[8,16,16,8]{3,2,1,0} parameter(2)
  %dx = (bf16[8,16,16,4]{3,2,1,0}, u8[0]{0}) custom-call(%dy, %k), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %dw = (bf16[8,3,3,4]{3,2,1,0}, u8[0]{0}) custom-call(%x, %dy), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %a = bf16[8,16,16,4]{3,2,1,0} get-tuple-element(%dx), index=0
  %b = bf16[8,3,3,4]{3,2,1,0} get-tuple-element(%dw), index=0
  ROOT %t = (bf16[8,16,16,4]{3,2,1,0}, bf16[8,3,3,4]{3,2,1,0}) tuple(%a, %b)
}
"""


def test_cudnn_backward_convolutions_cost_what_the_forward_one_does():
  rows = {r.name: r for r in hlo_cost.estimate(GPU_BACKWARD, CHIP, 1).rows}
  assert rows["dx"].flops == rows["dw"].flops == 2 * (8 * 16 * 16 * 8) * 9 * 4


def test_a_compiled_loop_counts_its_body_trip_count_times():
  trips = 5

  def f(x, w):
    return jax.lax.fori_loop(0, trips, lambda i, x: jnp.tanh(x @ w), x)

  compiled = jax.jit(f).lower(jnp.ones((8, 16)), jnp.ones((16, 16))).compile()
  e = hlo_cost.estimate(compiled.as_text(), chips.cpu_chip(1), 1)
  # Per trip: the matmul, a tanh per element, the counter's add; the condition runs
  # trips + 1 times.
  assert e.flops == trips * (2 * 8 * 16 * 16 + 8 * 16 + 1) + (trips + 1)
  assert e.unknown_trip_counts == []
  # XLA's own count sees the body once.
  assert compiled.cost_analysis()["flops"] < e.flops / 2


def test_region_drops_transforms_methods_and_repeated_scopes():
  def label(op_name):
    return hlo_cost.region(hlo_cost.Instruction("x", "f32[]", "add", [],
                                                f', metadata={{op_name="{op_name}"}}'))

  assert label("jit(train_step)/transpose(jvp(M))/M.encode/vis_enc/bn1/reduce_sum") == \
      "vis_enc/bn1"
  assert label("jit(train_step)/jvp(M)/M.decode/decoder_0/moe/shard_map/decoder_0/moe/dot") \
      == "decoder_0/moe"
  assert label("jit(train_step)/mul") == "train_step"
  assert hlo_cost.region(hlo_cost.Instruction("x", "f32[]", "copy", [], "")) == "unnamed copy"
  assert label("jit(train_step)/(transpose(jvp(M))/M.encode/a/reduce_sum:jvp(M)/b/psum)") == \
      "combined add"
