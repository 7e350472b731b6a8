"""The judge-scored eval as a page to look at, in the manner of BELLE's eval/ChatGPT_Score.html: per-class mean
scores as a bar chart, Score_w/o_others, and every question (class, question, reference, answer, the judge's reply
and score) filterable by class and score. One eval directory, or several side by side (grouped bars per class, a
column per run), the way BELLE's papers compare models class by class.

The page is one self-contained HTML file: inline CSS, an inline SVG chart drawn here, and a few lines of inline
script for the filters; nothing is fetched, so it opens from disk, offline, and can be mailed around.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

from paddle_belle import jsonl
from paddle_belle.checkpoint import atomic_path
from paddle_belle.evaluate.judge import NOT_IN_SCORE_WO_OTHERS, report

COLORS = ("#3b6fd4", "#e0803a", "#3aa564", "#c44e52", "#8172b2", "#937860")


def load_runs(directories) -> list[dict]:
    """Eval directories (``paddle-belle eval --out``), each named by its last component (its path where two
    share one): their judged answers, and the answers not judged yet."""
    paths = [Path(d) for d in directories]
    names = [p.resolve().name for p in paths]
    return [load_run(p, name if names.count(name) == 1 else str(p)) for p, name in zip(paths, names)]


def load_run(directory, name: str | None = None) -> dict:
    directory = Path(directory)
    judged_path, answers_path = directory / "judged.jsonl", directory / "answers.jsonl"
    if not judged_path.is_file() and not answers_path.is_file():
        raise FileNotFoundError(f"{directory}: no judged.jsonl or answers.jsonl (is it a `paddle-belle eval --out` "
                                f"directory?)")
    judged = {r["id"]: r for r in _records(judged_path)}
    answers = _records(answers_path)
    waiting = {r["id"]: {**r, "score": None, "not_judged": True} for r in answers if r["id"] not in judged}
    return {"name": name or str(directory), "judged": list(judged.values()),
            "records": [*judged.values(), *waiting.values()]}


def _records(path) -> list[dict]:
    if not path.is_file():
        return []
    records = jsonl.read(path)  # not jsonl.load: looking never truncates the file of a run still writing it
    for n, r in enumerate(records, 1):
        if not all(k in r for k in ("id", "class", "question", "answer")):
            raise ValueError(f"{path}: record {n} lacks \"id\", \"class\", \"question\" or \"answer\"")
    return records


def write_report_page(runs: list[dict], out, title: str | None = None) -> Path:
    """``runs``: ``load_run`` results (or dicts with "name", "judged", "records"). Written atomically."""
    out = Path(out)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(report_page(runs, title), encoding="utf-8")
    return out


def report_page(runs: list[dict], title: str | None = None) -> str:
    reports = [report(run["judged"]) for run in runs]
    classes = sorted({c for rep in reports for c in rep["per_class"]} | {r["class"] for run in runs
                                                                          for r in run["records"]})
    title = title or "BELLE eval: " + " vs ".join(run["name"] for run in runs)
    return PAGE.format(title=escape(title), style=STYLE, script=SCRIPT, summary=_summary(runs, reports),
                       chart=_chart(runs, reports, classes), per_class=_per_class(runs, reports, classes),
                       browser=_browser(runs, classes))


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _swatch(i: int) -> str:
    return f'<span class="swatch" style="background:{COLORS[i % len(COLORS)]}"></span>'


def _summary(runs, reports) -> str:
    rows = []
    for i, (run, rep) in enumerate(zip(runs, reports)):
        judges = sorted({r.get("judge_model", "?") for r in run["judged"]})
        rows.append(f"<tr><td>{_swatch(i)}{escape(run['name'])}</td><td>{escape(', '.join(judges))}</td>"
                    f"<td>{len(run['records'])}</td><td>{rep['scored']}</td><td>{rep['unscored']}</td>"
                    f"<td>{len(run['records']) - rep['questions']}</td><td>{_f(rep['overall_mean'])}</td>"
                    f"<td>{_f(rep['class_mean'])}</td><td class='key'>{_f(rep['score_wo_others'])}</td></tr>")
    return ("<table class='summary'><thead><tr><th>run</th><th>judge</th><th>answers</th><th>scored</th>"
            "<th>unscored</th><th>not judged</th><th>overall mean</th><th>mean of class means</th>"
            "<th>Score_w/o_others</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            f"<p class='note'>Score_w/o_others: the mean of the class means without "
            f"{' and '.join(sorted(NOT_IN_SCORE_WO_OTHERS))} (BELLE's). Unscored answers (no usable 得分 in the "
            f"judge's reply) count in no mean.</p>")


def _chart(runs, reports, classes) -> str:
    """Grouped bars: per class, one bar per run, its mean score on a 0-1 axis. Classes without a scored answer in
    a run have no bar there (and "–" in the table)."""
    bar, gap, left, top, plot_h, label_h = 18, 22, 40, 14, 200, 70
    group = bar * len(runs) + gap
    width = left + group * len(classes) + 10
    height = top + plot_h + label_h
    y = lambda v: top + plot_h * (1 - v)  # noqa: E731
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="mean score per class">']
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for k, name in enumerate(classes):
        x0 = left + gap / 2 + k * group
        for i, (run, rep) in enumerate(zip(runs, reports)):
            mean = rep["per_class"].get(name, {}).get("mean")
            if mean is None:
                continue
            x = x0 + i * bar
            parts.append(f'<rect class="bar" data-run="{i}" data-class="{escape(name)}" x="{x:.1f}" '
                         f'y="{y(mean):.1f}" width="{bar - 2}" height="{plot_h * mean:.1f}" '
                         f'fill="{COLORS[i % len(COLORS)]}"><title>{escape(run["name"])} · {escape(name)}: '
                         f'{mean:.3f}</title></rect>')
        cx = x0 + bar * len(runs) / 2
        parts.append(f'<text class="label" x="{cx:.1f}" y="{top + plot_h + 12}" text-anchor="end" '
                     f'transform="rotate(-35 {cx:.1f} {top + plot_h + 12})">{escape(name)}</text>')
    parts.append("</svg>")
    legend = "".join(f"<span class='legend'>{_swatch(i)}{escape(run['name'])}</span>" for i, run in enumerate(runs))
    return f"<div class='chart-box'>{''.join(parts)}</div><p>{legend}</p>"


def _per_class(runs, reports, classes) -> str:
    head = "".join(f"<th>{_swatch(i)}{escape(run['name'])}</th>" for i, run in enumerate(runs))
    rows = []
    for name in classes:
        cells = []
        for rep in reports:
            c = rep["per_class"].get(name)
            if c is None:
                cells.append("<td>–</td>")
                continue
            counts = f"{c['scored']} scored" + (f", {c['unscored']} unscored" if c["unscored"] else "")
            cells.append(f"<td>{_f(c['mean'])} <span class='muted'>({counts})</span></td>")
        rows.append(f"<tr><td>{escape(name)}</td>{''.join(cells)}</tr>")
    return (f"<table class='per-class'><thead><tr><th>class</th>{head}</tr></thead><tbody>{''.join(rows)}"
            "</tbody></table>")


def _browser(runs, classes) -> str:
    """Every question once, with each run's answer, judge's reply and score side by side."""
    keyed = {}  # (class, question) -> per-run record; runs of other limits or sets share what they share
    for i, run in enumerate(runs):
        for r in sorted(run["records"], key=lambda r: r["id"]):
            keyed.setdefault((r["class"], r["question"]), {})[i] = r
    options = "".join(f"<option>{escape(c)}</option>" for c in classes)
    run_options = "".join(f"<option value='{i}'>{escape(run['name'])}</option>" for i, run in enumerate(runs))
    head = "".join(f"<th>{_swatch(i)}{escape(run['name'])}</th>" for i, run in enumerate(runs))
    rows = []
    for n, ((name, question), by_run) in enumerate(keyed.items(), 1):
        reference = next((r.get("std_answer") for r in by_run.values() if r.get("std_answer") is not None), None)
        scores = [by_run[i]["score"] if i in by_run else None for i in range(len(runs))]
        cells = []
        for i in range(len(runs)):
            r = by_run.get(i)
            if r is None:
                cells.append("<td class='muted'>not in this run</td>")
                continue
            verdict = ("not judged" if r.get("not_judged") else
                       f"unscored: {escape(r.get('unscored', 'no score'))}" if r["score"] is None else
                       f"score {r['score']:g}")
            judge = (f"<details><summary>judge's reply</summary><div class='text'>{escape(r['judge_reply'])}</div>"
                     "</details>" if r.get("judge_reply") else "")
            cells.append(f"<td><div class='text'>{escape(r.get('answer', ''))}</div>{judge}"
                         f"<div class='score'>{verdict}</div></td>")
        rows.append(f"<tr data-class='{escape(name)}' data-scores='{escape(json.dumps(scores))}'><td>{n}</td>"
                    f"<td>{escape(name)}</td><td class='text'>{escape(question)}</td>"
                    f"<td class='text'>{escape(reference or '')}</td>{''.join(cells)}</tr>")
    run_filter = (f"<label>score of <select id='f-run'>{run_options}</select></label>" if len(runs) > 1 else
                  "<select id='f-run' hidden><option value='0'></option></select>")
    return (f"<form class='filters' onsubmit='return false'><label>class <select id='f-class'><option value=''>all"
            f"</option>{options}</select></label>{run_filter}<label>score from <input id='f-min' type='number' "
            "min='0' max='1' step='0.1'></label><label>to <input id='f-max' type='number' min='0' max='1' "
            "step='0.1'></label><label><input id='f-unscored' type='checkbox'> unscored only</label>"
            "<span id='shown'></span></form>"
            f"<table id='questions'><thead><tr><th>#</th><th>class</th><th>question</th><th>reference</th>{head}"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "PingFang SC", "Noto Sans CJK SC", "Microsoft YaHei", sans-serif;
       margin: 1.5rem; color: #1d1d1f; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f5f5f7; }
td.key { font-weight: bold; }
.muted, .note { color: #6e6e73; font-size: .9rem; }
.swatch { display: inline-block; width: .8em; height: .8em; margin-right: .35em; border-radius: 2px; }
.legend { margin-right: 1rem; }
.chart-box { overflow-x: auto; }
.chart text { font-size: 11px; fill: #444; }
.chart .grid { stroke: #e3e3e3; }
.filters { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; margin: .5rem 0; }
#questions td.text, #questions .text { white-space: pre-wrap; max-width: 32rem; overflow-wrap: anywhere; }
#questions td.text { min-width: 12rem; }
#questions .score { margin-top: .3rem; font-weight: bold; }
tr[hidden] { display: none; }
"""

SCRIPT = """
const rows = [...document.querySelectorAll("#questions tbody tr")];
const field = (id) => document.getElementById(id);
function filter() {
  const cls = field("f-class").value, run = Number(field("f-run").value), unscored = field("f-unscored").checked;
  const lo = parseFloat(field("f-min").value), hi = parseFloat(field("f-max").value);
  let shown = 0;
  for (const tr of rows) {
    const score = JSON.parse(tr.dataset.scores)[run];
    let ok = !cls || tr.dataset.class === cls;
    if (unscored) ok = ok && score === null;
    else if (!isNaN(lo) || !isNaN(hi)) ok = ok && score !== null && !(score < lo) && !(score > hi);
    tr.hidden = !ok;
    shown += ok;
  }
  field("shown").textContent = `${shown} of ${rows.length} questions shown`;
}
for (const id of ["f-class", "f-run", "f-min", "f-max", "f-unscored"]) {
  for (const event of ["input", "change"]) field(id).addEventListener(event, filter);
}
filter();
"""

PAGE = """<!doctype html>
<html lang="zh-CN">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>
<h1>{title}</h1>
{summary}
<h2>Mean score per class</h2>
{chart}
{per_class}
<h2>Questions</h2>
{browser}
<script>{script}</script>
</body>
</html>
"""
