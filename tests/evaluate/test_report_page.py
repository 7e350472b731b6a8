"""The eval report page (report.html, `paddle-belle eval-report`), rendered in a real headless chromium."""
import json

import numpy as np
import pytest
from browser import chrome, requested
from test_cli import run_cli

from paddle_belle.evaluate.judge import load_eval_set, report

PER_CLASS = 3


def write_run(directory, questions, scores, judge="judge-x"):
    """An eval directory as `paddle-belle eval` leaves it: judged.jsonl (and answers.jsonl) for BELLE questions."""
    directory.mkdir()
    judged = []
    for q, score in zip(questions, scores):
        reply = f"得分: {score}\n理由：……" if score is not None else "回答尚可。"
        judged.append({**q, "answer": f"{directory.name} 的回答 <{q['id']}>", "judge_model": judge,
                       "judge_reply": reply, "score": score, **({} if score is not None else {"unscored": "no 得分"})})
    (directory / "judged.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in judged),
                                            encoding="utf-8")
    (directory / "answers.jsonl").write_text("".join(json.dumps({k: r[k] for k in ("id", "class", "question",
                                                                                    "answer")},
                                                                ensure_ascii=False) + "\n" for r in judged),
                                             encoding="utf-8")
    return judged


@pytest.fixture
def runs(tmp_path):
    """Two runs over BELLE's own questions, PER_CLASS of each of its 10 classes; run b has no scored open qa."""
    questions, seen = [], {}
    for q in load_eval_set():
        if seen.setdefault(q["class"], 0) < PER_CLASS:
            seen[q["class"]] += 1
            questions.append(q)
    rng = np.random.default_rng(0)
    a = [None if i % 7 == 3 else float(rng.choice([0, 0.2, 0.5, 0.8, 1])) for i in range(len(questions))]
    b = [None if q["class"] == "open qa" or i % 5 == 1 else float(rng.choice([0, 0.3, 0.6, 0.9, 1]))
         for i, q in enumerate(questions)]
    return questions, {name: (write_run(tmp_path / name, questions, s), s) for name, s in {"a": a, "b": b}.items()}


@pytest.fixture
def browser():
    driver = chrome()
    yield driver
    driver.quit()


def test_one_run_and_two_side_by_side_in_a_real_browser(runs, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    questions, by_name = runs
    d = browser
    single = run_cli("eval-report", str(tmp_path / "a"))
    assert single.returncode == 0 and single.stdout.strip() == f"wrote {tmp_path / 'a' / 'report.html'}"
    both = run_cli("eval-report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab.html"))
    assert both.returncode == 0, both.stderr

    for page, names in ((tmp_path / "a" / "report.html", ["a"]), (tmp_path / "ab.html", ["a", "b"])):
        d.get(page.as_uri())
        reports = [report(by_name[n][0]) for n in names]
        # a bar per run and class with a scored answer, as tall as its mean
        bars = d.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")
        expected = {(i, c): v["mean"] for i, rep in enumerate(reports) for c, v in rep["per_class"].items()
                    if v["mean"] is not None}
        assert len(bars) == len(expected) and ("b" not in names or (1, "open qa") not in expected)
        for bar in bars:
            mean = expected[(int(bar.get_attribute("data-run")), bar.get_attribute("data-class"))]
            assert float(bar.get_attribute("height")) == pytest.approx(200 * mean, abs=0.06)
            assert bar.rect["height"] == pytest.approx(200 * mean, abs=1)  # as rendered, in CSS pixels
        summary = d.find_elements(By.CSS_SELECTOR, "table.summary tbody tr")
        assert [row.text.split()[0] for row in summary] == names
        assert [row.find_elements(By.TAG_NAME, "td")[-1].text for row in summary] == [
            f"{rep['score_wo_others']:.3f}" for rep in reports]

        # every question once, each run's answer beside it
        rows = d.find_elements(By.CSS_SELECTOR, "#questions tbody tr")
        assert len(rows) == len(questions) and all(r.is_displayed() for r in rows)
        assert len(rows[0].find_elements(By.TAG_NAME, "td")) == 4 + len(names)
        assert rows[0].find_elements(By.TAG_NAME, "td")[2].get_attribute("textContent") == questions[0]["question"]
        shown = lambda: [r for r in rows if r.is_displayed()]  # noqa: E731
        Select(d.find_element(By.ID, "f-class")).select_by_visible_text("math")
        assert len(shown()) == PER_CLASS and {r.get_attribute("data-class") for r in shown()} == {"math"}
        Select(d.find_element(By.ID, "f-class")).select_by_index(0)  # all
        for i, name in enumerate(names):
            if len(names) > 1:
                Select(d.find_element(By.ID, "f-run")).select_by_index(i)
            scores = by_name[name][1]
            d.find_element(By.ID, "f-min").send_keys("0.5")
            assert len(shown()) == sum(s is not None and s >= 0.5 for s in scores)
            d.find_element(By.ID, "f-min").clear()
            d.find_element(By.ID, "f-unscored").click()
            assert len(shown()) == scores.count(None)
            assert d.find_element(By.ID, "shown").text == f"{scores.count(None)} of {len(questions)} questions shown"
            d.find_element(By.ID, "f-unscored").click()
        assert len(shown()) == len(questions)
        assert all(url.startswith("file://") for url in requested(d))  # self-contained: nothing fetched
    d.execute_script("window.scrollTo(0, 0)")
    d.save_screenshot(str(tmp_path / "eval_report.png"))


def test_eval_report_names_a_directory_that_is_not_an_eval(tmp_path):
    (tmp_path / "empty").mkdir()
    out = run_cli("eval-report", str(tmp_path / "empty"))
    assert out.returncode == 1 and out.stderr.strip() == (
        f"paddle-belle eval-report: error: {tmp_path / 'empty'}: no judged.jsonl or answers.jsonl (is it a "
        "`paddle-belle eval --out` directory?)")
    assert not (tmp_path / "empty" / "report.html").exists()
    two = run_cli("eval-report", str(tmp_path / "empty"), str(tmp_path / "empty"))
    assert two.returncode == 2 and "--out is required with several directories" in two.stderr
