"""The web app's HTML, rendered on the server so every page works without JavaScript.

static/app.js only adds the per-word view (attention over the crop, experts)
to the pages that have a `#viewer` element. A multi-view study shows its
views side by side (`?view=v` of its crop URL), in the tables and the viewer.
"""

import html
import urllib.parse
from typing import Any, Sequence

from micar_jax.serve import results as results_lib

Example = results_lib.Example


def _page(title: str, body: str) -> str:
  return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · micar_jax</title>
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script>
</head><body>
<header><a class="brand" href="/">micar_jax</a>
<nav><a href="/">Test results</a><a href="/upload">New image</a></nav></header>
<main>{body}</main></body></html>"""


def _num_views(image: str | list[str]) -> int:
  return len(image) if isinstance(image, list) else 1


def _crop_urls(base: str, num_views: int) -> list[str]:
  """The crop of each view: `base` alone for a single image, `base?view=v` for a study's."""
  return [base] if num_views == 1 else [f"{base}?view={v}" for v in range(num_views)]


def _thumbs(base: str, num_views: int, alt: str) -> str:
  return "".join(f'<img class="thumb" loading="lazy" alt="{html.escape(alt)}'
                 f'{f" view {v + 1}" if num_views > 1 else ""}" src="{html.escape(url)}">'
                 for v, url in enumerate(_crop_urls(base, num_views)))


def _fmt(value: float | None) -> str:
  return "–" if value is None else f"{value:.4f}"


def marked(text: str, other: str) -> str:
  """`text` as HTML with the words that `other` also has wrapped in <mark>."""
  pieces = [f"<mark>{html.escape(p)}</mark>" if hit else html.escape(p)
            for p, hit in results_lib.matches(text, other)]
  return " ".join(pieces) or "<em>(empty)</em>"


def _corpus_table(corpus: dict[str, float], skipped: dict[str, str]) -> str:
  if not corpus and not skipped:
    return ""
  cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4f}</td></tr>" for k, v in corpus.items())
  cells += "".join(f"<tr><th>{html.escape(k)}</th><td title=\"{html.escape(why)}\">skipped</td></tr>"
                   for k, why in skipped.items())
  return f'<table class="corpus"><caption>Corpus scores (test split)</caption>{cells}</table>'


def progress_panel(status: dict[str, Any]) -> str:
  """The run's progress and the served checkpoint (`live.Live.status`), as a <section>."""
  lines = []
  holder = status.get("in_use_by")
  if holder:
    lines.append(f"{html.escape(str(holder.get('mode')))} in progress (pid "
                 f"{html.escape(str(holder.get('pid')))} on {html.escape(str(holder.get('host')))})")
  if status.get("step") is not None:
    lines.append(f"step <span id=\"progress-step\">{status['step']}</span>, epoch "
                 f"<span id=\"progress-epoch\">{status.get('epoch')}</span>")
  val = status.get("validation")
  if val:
    scores = ", ".join(f"{html.escape(k[4:])} {_fmt(v)}" for k, v in sorted(val.items())
                       if k.startswith("val_") and k != "val_best" and isinstance(v, (int, float)))
    lines.append(f"last validation (step {val.get('step')}, epoch {val.get('epoch')}): {scores}")
  served, saved = status.get("best_step_served"), status.get("best_step_saved")
  if served is not None:
    newer = f" (step {saved} is saved; it loads shortly)" if saved is not None and saved > served else ""
    lines.append(f"serving the best checkpoint of step <span id=\"served-step\">{served}</span>"
                 f"{newer}")
  elif status.get("model_loaded"):
    lines.append("serving config.init_from's weights (the run has no best checkpoint yet)")
  else:
    lines.append("no best checkpoint yet: the model loads when training saves one "
                 "(reload this page)")
  if status.get("error"):
    lines.append(f'<span class="error">{html.escape(status["error"])}</span>')
  return ('<section class="progress" id="progress"><h2>Run</h2><ul>'
          + "".join(f"<li>{line}</li>" for line in lines) + "</ul></section>")


def results_page(res: results_lib.Results, shown: Sequence[Example], word: str, sort: str,
                 order: str, min_score: float | None, progress: str = "") -> str:
  """The test results: corpus scores, a filter form, one table row per shown example.

  `progress` (HTML, e.g. `progress_panel`) comes first.
  """
  if not res.examples:
    return _page("Test results", f"{progress}<h1>Test results</h1><p class=\"empty\">This run "
                 "has no test results yet: run <code>--mode=test</code> (or train), then "
                 "reload.</p>")

  def sort_link(key: str, label: str) -> str:
    flip = "asc" if (sort == key and order == "desc") else "desc"
    query = urllib.parse.urlencode({"word": word, "sort": key, "order": flip})
    arrow = {"asc": " ▲", "desc": " ▼"}[order] if sort == key else ""
    return f'<a href="/?{query}">{html.escape(label)}{arrow}</a>'

  options = "".join(f'<option value="{html.escape(k)}"{" selected" * (k == sort)}>'
                    f"{html.escape(k)}</option>" for k in ["index"] + res.score_keys)
  orders = "".join(f'<option{" selected" * (o == order)}>{o}</option>' for o in results_lib.ORDERS)
  form = f"""<form class="filters" method="get" action="/">
<label>word <input name="word" value="{html.escape(word)}" placeholder="e.g. effusion"></label>
<label>sort by <select name="sort">{options}</select></label>
<label>order <select name="order">{orders}</select></label>
<label>min score <input name="min_score" type="number" step="any"
 value="{'' if min_score is None else min_score}"></label>
<button type="submit">Apply</button> <a href="/">reset</a></form>"""
  head = "".join(f"<th>{sort_link(k, k)}</th>" for k in res.score_keys)
  rows = []
  for e in shown:
    scores = "".join(f'<td class="num">{_fmt(e.scores.get(k))}</td>' for k in res.score_keys)
    rows.append(
        f'<tr id="ex{e.index}"><td class="num"><a href="/examples/{e.index}">{e.index}</a></td>'
        f'<td><a class="thumbs" href="/examples/{e.index}">'
        f'{_thumbs(f"/crops/examples/{e.index}.png", _num_views(e.image), f"example {e.index}")}'
        "</a></td>"
        f'<td class="report">{marked(e.generated, e.reference)}</td>'
        f'<td class="report">{marked(e.reference, e.generated)}</td>{scores}</tr>')
  table = (f'<table class="examples"><thead><tr><th>{sort_link("index", "#")}</th><th>image</th>'
           f"<th>generated</th><th>reference</th>{head}</tr></thead>"
           f"<tbody>{''.join(rows)}</tbody></table>")
  body = (f"{progress}<h1>Test results</h1>{_corpus_table(res.corpus, res.skipped)}{form}"
          f'<p class="count">{len(shown)} of {len(res.examples)} examples; '
          f"<mark>marked</mark> words appear in the other report.</p>{table}")
  return _page("Test results", body)


def _viewer(crop_url: str, num_views: int, view_url: str, generated: str) -> str:
  stages = "".join(
      f'<figure class="view"><div class="stage"><img class="crop" src="{html.escape(url)}" '
      f'alt="the crop the network saw{f" (view {v + 1})" if num_views > 1 else ""}">'
      f'<canvas class="overlay"></canvas></div>'
      + (f'<figcaption>view {v + 1} <span class="share"></span></figcaption>' if num_views > 1 else "")
      + "</figure>" for v, url in enumerate(_crop_urls(crop_url, num_views)))
  return f"""<section id="viewer" data-view-url="{html.escape(view_url)}">
<div class="views">{stages}</div>
<div class="panel">
<div class="controls"><label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label></div>
<p class="hint">Hover or select a word to see where it looked.</p>
<p id="words" class="words">{html.escape(generated)}</p>
<div id="experts" class="experts"></div>
<noscript><p>The per-word view needs JavaScript; its data is at
<a href="{html.escape(view_url)}">{html.escape(view_url)}</a>.</p></noscript>
</div></section>"""


def example_page(e: Example, score_keys: Sequence[str], prev_index: int | None,
                 next_index: int | None) -> str:
  """One test example: the per-word view, generated vs reference with matches marked, scores."""
  nav = " ".join(f'<a href="/examples/{i}">{label}</a>' for i, label in
                 ((prev_index, "← previous"), (next_index, "next →")) if i is not None)
  scores = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(e.scores.get(k))}</td></tr>"
                   for k in score_keys)
  body = (f'<p class="nav"><a href="/#ex{e.index}">all results</a> {nav}</p>'
          f"<h1>Test example {e.index}</h1>"
          + _viewer(f"/crops/examples/{e.index}.png", _num_views(e.image),
                    f"/api/examples/{e.index}/view", e.generated) +
          f'<section class="compare"><div><h2>generated</h2><p>{marked(e.generated, e.reference)}'
          f'</p></div><div><h2>reference</h2><p>{marked(e.reference, e.generated)}</p></div>'
          f"</section>" + (f'<table class="corpus"><caption>Scores</caption>{scores}</table>'
                           if scores else ""))
  return _page(f"Example {e.index}", body)


def upload_form(message: str = "", num_views: int = 1) -> str:
  """The upload form (PNG or JPEG): one or more images, or one study's `num_views` views."""
  error = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
  what = ("Each image is" if num_views == 1 else
          f"Select the {num_views} views of one study together, in view order (as the "
          "training data lists them); each is")
  body = f"""<h1>Report on new images</h1>{error}
<form class="upload" method="post" action="/upload" enctype="multipart/form-data">
<input type="file" name="files" accept="image/png,image/jpeg" multiple required>
<button type="submit">Generate reports</button></form>
<p class="hint">PNG or JPEG. {what} resized and centre-cropped as in training.</p>"""
  return _page("New image", body)


def uploaded_page(items: Sequence[tuple[str, str, str]], num_views: int = 1) -> str:
  """Reports for uploads: (file name, upload id, report) each (a study's names joined)."""
  rows = "".join(f'<li><a href="/uploads/{uid}">'
                 f'{_thumbs(f"/crops/uploads/{uid}.png", num_views, "")} {html.escape(name)}</a>'
                 f'<p class="report">{html.escape(report) or "<em>(empty)</em>"}</p></li>'
                 for name, uid, report in items)
  return _page("Reports", f'<h1>Reports</h1><ul class="uploads">{rows}</ul>'
                          '<p><a href="/upload">upload more</a></p>')


def upload_page(uid: str, name: str, report: str, num_views: int = 1) -> str:
  """One uploaded image (or study) with its report and the per-word view."""
  body = (f'<p class="nav"><a href="/upload">upload more</a></p><h1>{html.escape(name)}</h1>'
          f"{_viewer(f'/crops/uploads/{uid}.png', num_views, f'/api/uploads/{uid}/view', report)}"
          f'<section class="compare"><div><h2>report</h2><p>{html.escape(report)}</p></div>'
          "</section>")
  return _page(name, body)


def not_ready(message: str) -> str:
  """A page that needs the model before the run has a best checkpoint."""
  return _page("Not ready", f'<h1>Not ready yet</h1><p class="error">{html.escape(message)}</p>'
                            '<p><a href="/">the run\'s progress</a></p>')


def not_found(what: str) -> str:
  return _page("Not found", f'<h1>Not found</h1><p class="error">{html.escape(what)}</p>')
