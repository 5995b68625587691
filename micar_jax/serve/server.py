"""`--mode=serve`: the web app over a run folder on http://HOST:PORT/ until Ctrl-C.

uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal, so
the process ends like every mode: one line and exit code 130/143.
"""

import socket

import ml_collections

from micar_jax import errors


def serve(config: ml_collections.ConfigDict, workdir: str, host: str, port: int) -> None:
  """Loads the run's best checkpoint and serves the web app (blocks).

  Raises:
    errors.UserError: the serve extra is not installed, the address is taken,
      or the run has no checkpoint.
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
  from micar_jax.serve import engine as engine_lib  # pylint: disable=g-import-not-at-top
  sock = listen(host, port)
  try:
    engine = engine_lib.Engine(config, workdir, float(config.serve.max_wait_ms) / 1000)
  except BaseException:
    sock.close()
    raise
  try:
    app = app_lib.create_app(engine, workdir, float(config.serve.max_upload_mb),
                             int(config.serve.max_files))
    bound_port = sock.getsockname()[1]
    print(f"serving {workdir} on http://{host}:{bound_port}/ (Ctrl-C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
  finally:
    engine.close()
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
