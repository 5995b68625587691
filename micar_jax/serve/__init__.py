"""The local web app of `--mode=serve` (needs the `serve` extra: fastapi, uvicorn, python-multipart).

Nothing else in micar_jax imports this package; `micar_jax.main` loads it only
for --mode=serve.
"""
