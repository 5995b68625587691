"""The base configuration that every `configs/<dataset>.py` starts from.

Values are the reference's shared settings (github.com/AI-14/micar-vl-moe,
scripts/*/run_exp.sh); dataset files override what differs. Every deviation
from the reference is a switch here, off by default.
"""

import ml_collections

from micar_jax.data import registry

# Vocabulary size where neither the config nor a tokenizer gives one (MMR's order):
# the benchmark and the planner need shapes before any data exists.
DEFAULT_VOCAB = 2046

# Where the dataset configs look for torchvision's ResNet-101 IMAGENET1K_V2 weights,
# converted with `python -m micar_jax.convert torchvision-resnet` (the reference's start).
IMAGENET_RESNET101 = "weights/resnet101_imagenet1k_v2"
# model.vision_init_from value that trains the ResNet from random weights.
SCRATCH = "scratch"


def base_config() -> ml_collections.ConfigDict:
  """Returns the configuration shared by all datasets (the MMR values)."""
  c = ml_collections.ConfigDict()
  # Dataset name; selects the prepare step and the TFDS builder.
  c.dataset = "mmretinal"
  # Folder written by `python -m micar_jax.data.prepare` ({train,val,test}.jsonl).
  c.data_dir = "data/mmretinal"
  # Global seed (run scripts: 115111211) for init, dropout and shuffling.
  c.seed = 115111211

  c.data = ml_collections.ConfigDict()
  # Side length of the square crop fed to the vision encoder.
  c.data.image_size = 224
  # Shorter image side before the centre crop (torchvision IMAGENET1K_V2: 232).
  c.data.resize_size = 232
  # Token positions incl. <sos>/<eos>; reports are truncated to text_seq_len - 2.
  c.data.text_seq_len = 60
  # Word-level vocabulary: minimum train-split frequency of a kept word.
  c.data.min_frequency = 3
  # "word" (the reference) or "sentencepiece".
  c.data.tokenizer = "word"
  # SentencePiece model type ("unigram" or "bpe") when tokenizer="sentencepiece".
  c.data.sp_model_type = "unigram"
  # SentencePiece vocabulary size (an upper bound on tiny corpora).
  c.data.sp_vocab_size = 4000
  # Optional token2id.json to load instead of building from the train split.
  c.data.vocab_path = ""
  # Images per example, from the dataset's registry entry (IU X-ray: frontal + lateral).
  c.data.num_views = registry.DATASETS[c.dataset].num_views
  # Train-time augmentation (random resized crop + flip); the reference has none.
  c.data.augment = False
  # grain worker processes for decoding (0 = in the main process).
  c.data.worker_count = 0
  # Per-worker prefetch buffer (batches).
  c.data.worker_buffer_size = 2
  # "jsonl" (prepared folder) or "tfds" (array_record built by micar_jax.data.tfds_builders).
  c.data.source = "jsonl"
  # TFDS data_dir for source="tfds" ("" = ~/tensorflow_datasets).
  c.data.tfds_data_dir = ""
  # Synthetic dataset only: examples generated for (train, val, test).
  c.data.synthetic_sizes = registry.DATASETS["synthetic"].generated_sizes

  # The one declaration of every model setting and its default; models.model_config.ModelConfig
  # reads these by name (and marks the compute-only ones that a checkpoint does not depend on).
  c.model = ml_collections.ConfigDict()
  # Vocabulary size V; 0 means "take it from the tokenizer".
  c.model.vocab_size = 0
  # ResNet depth (50, 101, 152); ignored when resnet_stages is set.
  c.model.resnet_depth = 101
  # Explicit bottleneck stage sizes, e.g. (1, 1, 1, 1) for tests; () = from depth.
  c.model.resnet_stages = ()
  # Stem width of the ResNet (64 in torchvision; stage widths are 1x,2x,4x,8x).
  c.model.resnet_width = 64
  # Directory of converted torchvision ResNet weights; "" or "scratch" = random init.
  # The dataset configs expect ImageNet weights at IMAGENET_RESNET101 (the reference's start).
  c.model.vision_init_from = ""
  # FPN / fusion channel width d_v (visual token size).
  c.model.d_v = 2048
  # Side of the adaptive average pool grid; tokens = pool_size**2.
  c.model.pool_size = 7
  # Transformer width.
  c.model.d_model = 512
  # Latent attention width (q, k, v each d_latent, split over heads).
  c.model.d_latent = 768
  # Attention heads.
  c.model.num_heads = 8
  # Per-head channels without rotary embedding.
  c.model.qk_nope_dim = 48
  # Per-head channels of the rope branch (only the first half is rotated).
  c.model.qk_rope_dim = 48
  # RoPE base frequency.
  c.model.rope_theta = 10000.0
  # SwiGLU hidden width (encoder FFN and each expert).
  c.model.d_ff = 2048
  # Encoder blocks = decoder blocks.
  c.model.num_layers = 3
  # Activation: silu | gelu (exact) | selu | telu.
  c.model.act_fn = "gelu"
  # Dropout on attention probabilities.
  c.model.attention_dropout = 0.12
  # Dropout on embeddings, FFN / expert outputs and the fusion MLP.
  c.model.dropout = 0.1
  # Experts per MoE layer.
  c.model.num_experts = 8
  # Experts per token.
  c.model.top_k = 2
  # "sum": unweighted sum of the k experts (reference); "weighted": gate-weighted.
  c.model.moe_combine = "sum"
  # "entropy": sum(p_mean*log p_mean) over all tokens (reference); "switch": E*sum(f*P).
  c.model.moe_aux_loss = "entropy"
  # Router z-loss weight (ST-MoE); 0 disables it (reference).
  c.model.router_z_loss_weight = 0.0
  # Expert capacity factor; <= 0 means dropless (every routed token is computed).
  c.model.capacity_factor = -1.0
  # Dispatch: "sort" (sort + ragged_dot), "einsum" (capacity buffers) or "expert_parallel"
  # (shard_map + all_to_all over mesh.expert, which must divide num_experts).
  c.model.moe_impl = "sort"
  # Compute dtype: float32 (reference) or bfloat16 (params, norms, softmax stay fp32);
  # float64 under jax_enable_x64 for the train-step parity check (tools/parity_train.py).
  c.model.dtype = "float32"
  # Rematerialise blocks in the backward pass to save memory.
  c.model.remat = False

  c.train = ml_collections.ConfigDict()
  # Global batch size (reference: train loader keeps the last partial batch).
  c.train.batch_size = 32
  # Epochs.
  c.train.epochs = 100
  # Early stop after this many consecutive epochs without a better val score.
  c.train.max_patience = 50
  # Learning rate of everything but the vision encoder.
  c.train.lr = 1e-4
  # Learning rate of the vision encoder (MSVE).
  c.train.v_lr = 5e-5
  # Decoupled AdamW weight decay on every parameter.
  c.train.weight_decay = 5e-5
  # StepLR factor, applied every lr_step_epochs epochs.
  c.train.gamma = 0.1
  # StepLR period in epochs; 0 = epochs // 2 (the reference).
  c.train.lr_step_epochs = 0
  # Weight of the MoE auxiliary loss in the total loss.
  c.train.aux_loss_weight = 0.01
  # Global-norm gradient clipping; 0 disables it (reference).
  c.train.grad_clip = 0.0
  # Stop after this many steps (smoke runs); 0 = no limit.
  c.train.max_steps = 0
  # Before training, compare the compiled train step's memory with the free memory:
  # "refuse" (stop with one line if it will not fit), "warn", "off" (memory_check.py).
  c.train.memory_check = "refuse"
  # Log training metrics every this many steps.
  c.train.log_every = 10
  # Save the latest checkpoint every this many steps (and at each epoch end).
  c.train.checkpoint_every = 200
  # Non-finite steps (loss, gradient or update) whose update is skipped before training
  # stops with an error; 0 = stop at the first one. The skips are counted in metrics.jsonl.
  c.train.skip_nonfinite_steps = 0
  # Stop when the gradient norm is exactly 0 for this many steps in a row (a collapsed
  # model that would otherwise train on and be tested); 0 never stops.
  c.train.max_zero_grad_steps = 10
  # Keep the last partial training batch (reference) instead of dropping it.
  c.train.keep_last_partial_batch = False
  # Metric suite that scores the validation set for checkpoint selection (metrics/scores.py).
  c.train.select_suite = "reference"
  # Key of select_suite that picks the best checkpoint (higher is better).
  c.train.select_key = "ref/score"

  c.eval = ml_collections.ConfigDict()
  # Eval / decode batch size.
  c.eval.batch_size = 32
  # "greedy" (what the reference's beam_search computes, KV-cached), "beam" (true beam
  # search) or "greedy_uncached" (re-runs the decoder on the whole prefix, for checks).
  c.eval.decode = "greedy"
  # Beam width for decode="beam".
  c.eval.beam_width = 3
  # Length penalty alpha for beam search ((5+len)/6)**alpha; 0 = none.
  c.eval.length_penalty = 0.0
  # Keep tokens after the first <eos> in hypotheses (reference) or cut there.
  c.eval.keep_after_eos = True
  # Metric suites: "reference" (jury-equivalent), "coco" (pycocoevalcap-equivalent).
  c.eval.suites = ("reference", "coco")
  # nltk data folder holding WordNet, built there from Debian's wordnet-base files on first
  # use; "" = nltk's own search paths only. Without WordNet, nltk METEOR is skipped.
  c.eval.wordnet_dir = "~/.cache/micar_jax/nltk_data"
  # Tokenisation for the coco suite: "whitespace" (as decoded) or "jury".
  c.eval.coco_tokenize = "whitespace"
  # Longest wait (s) for one reply of Java METEOR (coco suite; the first includes the JVM's
  # start-up); a JVM that stalls past it, or dies, is killed and coco/meteor is skipped.
  c.eval.meteor_timeout_s = 300.0
  # Folder with the RaTEScore model folders; "" skips RaTEScore.
  c.eval.ratescore_dir = ""
  # ref/rougeL: "bootstrap" = jury's median of 1000 resampled means (the reference's value),
  # "mean" = plain mean over pairs.
  c.eval.rouge_aggregate = "bootstrap"
  # Logged validation loss: "batch" = mean of per-batch losses (the reference's),
  # "token" = CE averaged over all of the split's tokens (+ mean aux terms).
  c.eval.val_loss_mean = "batch"

  # --mode=explain: decoder layer whose cross-attention is shown ("mean" or an index).
  c.eval.explain_layers = "mean"
  # --mode=explain: attention head shown ("mean" or an index).
  c.eval.explain_heads = "mean"
  # --mode=explain: most per-word attention panels in a figure.
  c.eval.explain_max_words = 24

  c.serve = ml_collections.ConfigDict()
  # --mode=serve: how long a request waits for others to share its batch (<= eval.batch_size).
  c.serve.max_wait_ms = 20.0
  # --mode=serve: largest accepted upload, per file, in MiB.
  c.serve.max_upload_mb = 20.0
  # --mode=serve: most files in one upload.
  c.serve.max_files = 64

  c.mesh = ml_collections.ConfigDict()
  # Devices the mesh uses (the first N of jax.devices()); 0 = all of them.
  c.mesh.num_devices = 0
  # Data-parallel axis size (-1 fills the remaining devices).
  c.mesh.data = -1
  # Fully-sharded data-parallel axis size.
  c.mesh.fsdp = 1
  # Expert-parallel axis size.
  c.mesh.expert = 1
  # Tensor-parallel axis size.
  c.mesh.tensor = 1

  # Orbax checkpoint of a whole model (e.g. from `micar_jax.convert official`).
  c.init_from = ""
  return c


def reference_config(dataset: str, *, num_layers: int, act_fn: str, text_seq_len: int,
                     batch_size: int, epochs: int, max_patience: int) -> ml_collections.ConfigDict:
  """The base config with a run script's per-dataset settings (docs/reference_model.md §6)."""
  c = base_config()
  c.dataset = dataset
  c.model.vision_init_from = IMAGENET_RESNET101
  c.data.num_views = registry.DATASETS[dataset].num_views
  c.data_dir = f"data/{dataset}"
  c.data.text_seq_len = text_seq_len
  c.model.num_layers = num_layers
  c.model.act_fn = act_fn
  c.train.batch_size = c.eval.batch_size = batch_size
  c.train.epochs = epochs
  c.train.max_patience = max_patience
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to the test size: stages (1,1,1,1), width 8, 32 px, from scratch.

  No ImageNet start: ResNet-101 weights do not fit the shrunken backbone.
  """
  c.model.vision_init_from = SCRATCH
  c.data.image_size = 32
  c.data.resize_size = 36
  c.model.resnet_stages = (1, 1, 1, 1)
  c.model.resnet_width = 8
  c.model.d_v = 32
  c.model.pool_size = 7
  c.model.d_model = 32
  c.model.d_latent = 56
  c.model.num_heads = 4
  c.model.qk_nope_dim = 6
  c.model.qk_rope_dim = 8
  c.model.d_ff = 64
  c.model.num_layers = 1
  c.model.num_experts = 4
  c.train.batch_size = 4
  c.eval.batch_size = 4
  return c


def apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the `configs/x.py:ARG` variant; "" keeps c, "tiny" shrinks it."""
  if arg in (None, ""):
    return c
  if arg == "tiny":
    return tiny(c)
  raise ValueError(f"unknown config variant {arg!r}; expected '' or 'tiny'")
