"""Optional RaTEScore (the reference's test-time metric), from local weights only.

RaTEScore 0.6.0 needs torch, transformers and medspacy (with numpy<2, which
the project does not pin; docs/metrics.md §8), so it is never a project
dependency. It runs only when the `RaTEScore` package imports and a local
folder holds both models, as downloaded from the Hugging Face Hub:

  <ratescore_dir>/RaTE-NER-Deberta   (Angelakeke/RaTE-NER-Deberta)
  <ratescore_dir>/BioLORD-2023-C     (FremyCompany/BioLORD-2023-C)

Otherwise it is skipped with a one-line reason; nothing is downloaded.
"""

import os
import pathlib
from typing import Sequence

import numpy as np

NER_MODEL = "RaTE-NER-Deberta"
ENCODER_MODEL = "BioLORD-2023-C"


def ratescore_scores(hypotheses: Sequence[str], references: Sequence[str],
                     ratescore_dir: str | os.PathLike | None) -> tuple[dict[str, float], dict[str, str]]:
  """Mean and population std of per-pair RaTEScore, as the reference reports.

  Args:
    hypotheses: `[num_pairs]` generated reports.
    references: `[num_pairs]` ground-truth reports.
    ratescore_dir: folder holding the two model folders; "" or None skips.

  Returns:
    `(values, skipped)`: values has `mean` and `std` (ddof 0); or empty values
    and skipped `{"ratescore": reason}`.
  """
  if not ratescore_dir:
    return {}, {"ratescore": "no local RaTEScore model folder configured"}
  root = pathlib.Path(ratescore_dir)
  missing = [m for m in (NER_MODEL, ENCODER_MODEL) if not (root / m).is_dir()]
  if missing:
    return {}, {"ratescore": f"{root} lacks model folder(s) {', '.join(missing)}"}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from RaTEScore import RaTEScore  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {}, {"ratescore": f"RaTEScore cannot be imported ({e})"}
  scorer = RaTEScore(bert_model=str(root / NER_MODEL), eval_model=str(root / ENCODER_MODEL),
                     batch_size=8, use_gpu=torch.cuda.is_available())
  per_pair = np.asarray(scorer.compute_score(list(hypotheses), list(references)), np.float64)
  return {"mean": float(per_pair.mean()), "std": float(per_pair.std())}, {}
