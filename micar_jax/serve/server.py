"""`--mode=serve`: the web app over a run folder on http://HOST:PORT/ until Ctrl-C.

uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal, so
the process ends like every mode: one line and exit code 130/143.
Serving only reads the run folder and takes no lock, so a run can be browsed
while it trains (`micar_jax.serve.live`).
"""

import socket

import ml_collections

from micar_jax import errors


def serve(config: ml_collections.ConfigDict, workdir: str, host: str, port: int) -> None:
  """Loads the run's best checkpoint and serves the web app (blocks).

  A run without a best checkpoint yet is served without the model until
  training saves one; a newer best replaces the served one.

  Raises:
    errors.UserError: the serve extra is not installed, the address is taken,
      or the run's checkpoint or config cannot be served.
  """
  try:
    # pylint: disable=g-import-not-at-top,unused-import
    import fastapi  # noqa: F401
    import python_multipart  # noqa: F401
    import uvicorn
  except ImportError as e:
    raise errors.UserError(f"--mode=serve needs the serve extra ({e.name} is not installed): "
                           "pip install -e '.[serve]'") from None
  from micar_jax.serve import app as app_lib  # pylint: disable=g-import-not-at-top
  from micar_jax.serve import live as live_lib  # pylint: disable=g-import-not-at-top
  sock = listen(host, port)
  try:
    live = live_lib.Live(config, workdir, float(config.serve.max_wait_ms) / 1000)
  except BaseException:
    sock.close()
    raise
  try:
    if live.engine is None:
      print(f"{workdir} has no best checkpoint yet: serving the run's progress; the model loads "
            "when training saves one", flush=True)
    app = app_lib.create_app(live, workdir, float(config.serve.max_upload_mb),
                             int(config.serve.max_files))
    bound_port = sock.getsockname()[1]
    print(f"serving {workdir} on http://{host}:{bound_port}/ (Ctrl-C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
  finally:
    live.close()
    sock.close()


def listen(host: str, port: int) -> socket.socket:
  """A listening TCP socket on (host, port); port 0 picks a free one.

  Raises:
    errors.UserError: the address cannot be bound (taken, or not this machine's).
  """
  sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
  except (OSError, OverflowError) as e:
    sock.close()
    raise errors.UserError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})") from None
  return sock
