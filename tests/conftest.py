"""Test-session setup and the fixtures several test modules share.

Setup: 8 simulated CPU devices, parsed absl flags, a shared compile cache.
Fixtures: config loading, the tiny synthetic config, a tiny run folder with a
best checkpoint (and its two-view variant), the sharp tiny decoding model, and a
served tiny run.
"""

import contextlib
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile
import threading

# Must happen before jax initialises its backends.
# Tests compile far more than they run: a low XLA optimisation level halves compile time.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Subprocess tests (the CLI) reuse compiled programs through this cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "micar_jax_test_jit_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

from micar_jax.config import defaults  # noqa: E402
from micar_jax.core import checkpointing  # noqa: E402
from micar_jax.core import run as run_lib  # noqa: E402
from micar_jax.models import model as model_lib  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
flags.FLAGS.mark_as_parsed()

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_config(spec):
  """A config file as --config takes it: "configs/NAME.py" or "configs/NAME.py:ARG".

  A relative path is taken from the repository root. Without ":ARG" the file's
  get_config() gets no argument, as config_flags calls it.
  """
  path, sep, arg = str(spec).partition(":")
  path = ROOT / path
  module_spec = importlib.util.spec_from_file_location(path.stem + "_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if sep else module.get_config()


def _tiny_config(folder, **train_overrides):
  """configs/synthetic.py:tiny shrunk for tests, its data in folder/data; overrides set config.train."""
  c = _load_config("configs/synthetic.py:tiny")
  c.data_dir = str(pathlib.Path(folder) / "data")
  c.data.synthetic_sizes = (16, 4, 4)
  c.data.text_seq_len = 12
  c.train.epochs = 2
  c.train.max_patience = 5
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.eval.suites = ("reference",)
  c.mesh.num_devices = 1
  for key, value in train_overrides.items():
    setattr(c.train, key, value)
  return c


@pytest.fixture(scope="session")
def load_config():
  """load_config("configs/NAME.py[:ARG]") -> that file's get_config() (or get_config(ARG))."""
  return _load_config


@pytest.fixture(scope="session")
def tiny_config():
  """tiny_config(folder, **train_overrides) -> a new tiny synthetic config, data in folder/data."""
  return _tiny_config


@pytest.fixture(scope="session")
def _tiny_run_template(tmp_path_factory):
  """A folder with data/ and run/: the synthetic data, the tokenizer, an initialised best checkpoint."""
  tmp = tmp_path_factory.mktemp("tiny_run")
  config = _tiny_config(tmp)
  run = run_lib.Run(config, str(tmp / "run"))  # builds the synthetic data and the tokenizer
  mc = run.model_config
  variables = nn.meta.unbox(jax.jit(model_lib.MicarVLMoE(mc).init)(
      jax.random.PRNGKey(0), *run.batch_spec.dummy()))
  run.checkpoints.save_best(1, {"params": variables["params"],
                                "batch_stats": variables["batch_stats"]}, {"score": 0.0})
  run.checkpoints.close()
  return tmp


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, _tiny_run_template):
  """tiny_run(name) -> a new folder holding its own copy of one tiny run, built once a session.

  The copy has data/ (the synthetic set of tiny_config(folder)) and run/, a
  workdir whose best checkpoint is a freshly initialised tiny model (no
  training, not yet tested). Each caller may write to its copy freely.
  """
  def copy(name):
    folder = tmp_path_factory.mktemp(name)
    shutil.copytree(_tiny_run_template, folder, dirs_exist_ok=True)
    return folder
  return copy


@pytest.fixture(scope="session")
def tiny_two_view_run(tiny_run):
  """tiny_two_view_run(name) -> (folder, config): a tiny_run copy made two-view.

  Row i of each split of data/ becomes the study [image i, image i+1 (cyclic)]
  with row i's report, and config is tiny_config(folder) with data.num_views=2.
  The best checkpoint is tiny_run's (no parameter depends on the view count).
  """
  def copy(name):
    folder = tiny_run(name)
    for split in ("train", "val", "test"):
      path = folder / "data" / f"{split}.jsonl"
      rows = [json.loads(line) for line in path.read_text().splitlines()]
      path.write_text("".join(
          json.dumps({"image": [r["image"], rows[(i + 1) % len(rows)]["image"]],
                      "report": r["report"]}) + "\n" for i, r in enumerate(rows)))
    # The checkpoint's recorded model config must agree with the two-view config.
    run_config = folder / "run" / checkpointing.RUN_CONFIG
    run_config.write_text(json.dumps(dict(json.loads(run_config.read_text()), num_views=2)))
    config = _tiny_config(folder)
    config.data.num_views = 2
    return folder, config
  return copy


@pytest.fixture(scope="session")
def tested_two_view_run(tiny_two_view_run):
  """tested_two_view_run(name) -> (folder, config): a tiny_two_view_run copy whose best
  checkpoint `--mode=test` has scored (folder/run/test/ holds its outputs)."""
  def copy(name):
    folder, config = tiny_two_view_run(name)
    run = run_lib.Run(config, str(folder / "run"))
    run_lib.test_best(run)
    run.checkpoints.close()
    return folder, config
  return copy


@pytest.fixture(scope="session")
def sharp_tiny_model():
  """(config, ModelConfig, params, batch_stats, images [6, 32, 32, 3]) of a sharp tiny model.

  The tiny model with text_seq_len 8 and vocabulary 20, initialised exactly like
  test_model's (to share its compiled init), its params tripled: its reports
  depend on the image and stop at different steps.
  """
  c = defaults.tiny(defaults.base_config())
  c.data.text_seq_len = 8
  mc = model_lib.ModelConfig.from_config(c, 20)
  model = model_lib.MicarVLMoE(mc)
  rng = np.random.RandomState(0)
  images = jnp.asarray(rng.randn(2, 32, 32, 3).astype(np.float32))
  ids = jnp.asarray(rng.randint(4, 20, size=(2, c.data.text_seq_len)).astype(np.int32))
  variables = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), images, ids))
  params = jax.tree.map(lambda x: 3.0 * x, variables["params"])
  images = jnp.asarray(rng.randn(6, 32, 32, 3).astype(np.float32))
  return c, mc, params, variables["batch_stats"], images


@contextlib.contextmanager
def _running_server(engine, workdir, **app_options):
  """The app on a real uvicorn server on 127.0.0.1 (free port), in a thread; yields its URL."""
  import uvicorn  # pylint: disable=g-import-not-at-top

  from micar_jax.serve import app as app_lib  # pylint: disable=g-import-not-at-top
  from micar_jax.serve import server  # pylint: disable=g-import-not-at-top
  sock = server.listen("127.0.0.1", 0)
  app = app_lib.create_app(engine, workdir, **app_options)
  srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
  thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  try:
    while not srv.started:
      thread.join(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
  finally:
    srv.should_exit = True
    thread.join()
    sock.close()


@pytest.fixture(scope="session")
def running_server():
  """running_server(engine, workdir, **app_options): a context manager yielding a served URL."""
  pytest.importorskip("fastapi")
  pytest.importorskip("uvicorn")
  return _running_server


@pytest.fixture(scope="module")
def served(tiny_run):
  """(config, workdir, engine, folder): a tested copy of the tiny run and an engine over it."""
  pytest.importorskip("fastapi")
  from micar_jax.serve import engine as engine_lib  # pylint: disable=g-import-not-at-top
  tmp = tiny_run("serve")
  config = _tiny_config(tmp)
  config.eval.suites = ("reference", "coco")
  workdir = str(tmp / "run")
  run = run_lib.Run(config, workdir)
  run_lib.test_best(run)
  run.checkpoints.close()
  engine = engine_lib.Engine(config, workdir, max_wait_s=0.2)
  engine.warm_up()
  yield config, workdir, engine, tmp
  engine.close()
