"""`python -m micar_jax.plan`: the entry point of micar_jax/performance/plan.py."""

from micar_jax.performance import plan

if __name__ == "__main__":
  plan.program()
