"""``scgrpo-verl explain``: the token-credit page, rendered by headless Chromium."""

import html
import html.parser
import os
import shutil
import subprocess

import pytest
import torch

from scgrpo_verl.cli import main
from scgrpo_verl.explain import explain

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium is required in CI (.ci/run installs Debian's chromium)")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    return path


class TokenSpans(html.parser.HTMLParser):
    """Text of every <span class="tok"> per row, and the teacher prompt block."""

    def __init__(self):
        super().__init__()
        self.rows, self.teacher_prompt, self._in_tok, self._in_prompt = [], "", False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "row":
            self.rows.append([])
        if tag == "span" and attrs.get("class") == "tok":
            self._in_tok = True
            self.rows[-1].append("")
        if tag == "pre" and attrs.get("id") == "teacher-prompt":
            self._in_prompt = True

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_tok = False
        if tag == "pre":
            self._in_prompt = False

    def handle_data(self, data):
        if self._in_tok:
            self.rows[-1][-1] += data
        elif self._in_prompt:
            self.teacher_prompt += data


PROBE = """<script>
window.addEventListener("load", () => {
  const visible = (el) => {
    const r = el.getBoundingClientRect(), st = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && st.visibility === "visible" && st.display !== "none" && +st.opacity > 0;
  };
  const lum = (rgb) => {
    const c = rgb.match(/[\\d.]+/g).slice(0, 3).map(Number).map((v) => v / 255)
      .map((v) => (v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  const contrast = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const out = { legends: {}, tick_texts: {}, hidden_values: [], values: [], min_contrast: 99 };
  for (const id of ["legend-weight", "legend-divergence"]) {
    const el = document.getElementById(id);
    const ticks = [...el.querySelectorAll(".tick")];
    out.legends[id] = visible(el) && visible(el.querySelector(".bar")) && ticks.length === 5 && ticks.every(visible);
    out.tick_texts[id] = ticks.map((t) => t.textContent);
  }
  const grad = getComputedStyle(document.querySelector("#legend-weight .bar")).backgroundImage;
  const stops = grad.match(/rgb\\([^)]*\\)/g);
  out.weight_bar_ends = [stops[0], stops[stops.length - 1]];
  const rows = [...document.querySelectorAll("#values tbody tr")];
  out.value_rows = rows.length;
  rows.forEach((tr, i) => {
    const cells = [...tr.children];
    out.values.push(cells.map((c) => c.textContent));
    if (!cells.every(visible)) out.hidden_values.push(i);
    const st = getComputedStyle(cells[3]);
    out.min_contrast = Math.min(out.min_contrast, contrast(st.color, st.backgroundColor));
  });
  const pivots = [...document.querySelectorAll("#pivotal tbody tr")];
  out.pivotal_rows = pivots.length;
  out.pivotal_marks = pivots.map((tr) => visible(tr.querySelector("mark")));
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def fmt(value):
    from scgrpo_verl.explain import _fmt

    return _fmt(value)


def probe_rendering(browser, page, tmp_path):
    """Render a copy of the page with a probe script in headless Chromium; the probe measures the laid-out page."""
    import json
    import re

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-probe'}",
                          "--window-size=1000,800", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.DOTALL)
    assert found, dom.stdout[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from scgrpo_verl.cpu_backend.assets import prepare_assets

    return prepare_assets(str(tmp_path_factory.mktemp("explain_assets"))).model


def test_explain_page_in_headless_chromium_shows_every_token(model_path, tmp_path):
    browser = chromium()
    out = tmp_path / "credit.html"
    rollout = "3 + 4 = 8, so the answer is\n#### 8 <b>&</b>"
    credit = explain(model_path, "What is 3 + 4?", rollout, "3 + 4 = 7. #### 7", str(out))
    assert "".join(credit.tokens) == rollout  # byte-level tokens decode back to the rollout, none dropped
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = TokenSpans()
    parsed.feed(dom.stdout)
    assert len(parsed.rows) == 2  # shaded by f(D) and by D
    for row in parsed.rows:
        assert row == credit.tokens
    assert "3 + 4 = 7. #### 7" in parsed.teacher_prompt and "What is 3 + 4?" in parsed.teacher_prompt
    # the legends and the values are laid out and readable without hover (a script probes the rendered page)
    probe = probe_rendering(browser, out, tmp_path)
    assert probe["legends"] == {"legend-weight": True, "legend-divergence": True}, probe
    assert probe["weight_bar_ends"] == ["rgb(68, 1, 84)", "rgb(253, 231, 37)"]  # viridis(0), viridis(1)
    assert probe["tick_texts"]["legend-weight"] == ["0", "0.25", "0.5", "0.75", "1"]
    assert probe["value_rows"] == len(credit.tokens) and probe["hidden_values"] == []
    assert probe["min_contrast"] >= 4.5, probe  # WCAG AA for the coloured f(D) cells
    shown = [(row[2], row[3]) for row in probe["values"]]
    assert shown == [(fmt(d), f"{w:.3f}") for d, w in zip(credit.divergence, credit.weights)]
    assert probe["pivotal_rows"] == 10 and all(probe["pivotal_marks"])
    shot = tmp_path / "credit.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                    "--window-size=1000,800", out.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 1000


def test_token_credit_values_match_a_naive_computation(model_path, tmp_path):
    """D per token = KL(q || p) from two separate forwards; f(D) = D / (D + c) with c = max(P75(D), c_min)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scgrpo_verl.settings import TemplateConfig

    from scgrpo_verl.teacher.templates import sc_grpo_teacher_messages

    prompt, rollout, solution = "What is 2 + 2?", "2 + 2 = 5 #### 5", "2 + 2 = 4. #### 4"
    credit = explain(model_path, prompt, rollout, solution, str(tmp_path / "page.html"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": prompt}]

    def ids(m):
        out = tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    student, teacher = ids(messages), ids(sc_grpo_teacher_messages(messages, solution, TemplateConfig()))
    response = tokenizer.encode(rollout, add_special_tokens=False)
    expected = []
    with torch.no_grad():
        for t in range(len(response)):
            p = model(input_ids=torch.tensor([student + response[:t]])).logits[0, -1]
            q = model(input_ids=torch.tensor([teacher + response[:t]])).logits[0, -1]
            log_p, log_q = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
            expected.append(float((log_q.exp() * (log_q - log_p)).sum()))  # KL(q || p), naive
    torch.testing.assert_close(torch.tensor(credit.divergence), torch.tensor(expected), rtol=1e-4, atol=1e-6)
    d = torch.tensor(credit.divergence)  # f(D) checked on the page's own D (D itself is checked above)
    c = max(float(torch.quantile(d, 0.75)), 1e-4)
    assert credit.c == pytest.approx(c, rel=1e-6)
    torch.testing.assert_close(torch.tensor(credit.weights), d / (d + c), rtol=1e-4, atol=1e-6)


def test_cli_explain_reads_files(model_path, tmp_path, capsys):
    (tmp_path / "rollout.txt").write_text("It is 9. #### 9")
    out = tmp_path / "page.html"
    assert main(["explain", "--model-path", model_path, "--prompt", "What is 4 + 5?", "--rollout",
                 f"@{tmp_path / 'rollout.txt'}", "--solution", "4 + 5 = 9 #### 9", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "wrote" in printed.out and "the rollout is correct (graded as math500 against the solution's final " \
        "answer '9')" in printed.out
    # the tiny random model: teacher and student barely differ, which the page and the command say
    assert printed.err.splitlines()[-1].startswith("scgrpo-verl explain: warning: every D is below 0.01 (max ")
    page = out.read_text()
    assert '<p id="verdict">The rollout is correct (graded as math500' in page
    assert '<p id="warning" class="warning">Warning: every D is below 0.01' in page
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained
    assert page.count('class="tok"') == 2 * len("It is 9. #### 9")  # byte-level: one token per byte
    assert "@media print" in page and "print-color-adjust: exact" in page  # colours survive printing


def test_pivotal_tokens_are_the_largest_d_with_context():
    from scgrpo_verl.explain import TokenCredit, pivotal_tokens, render_token_credit_html

    tokens = list("abcdefghij")
    divergence = [0.1, 5.0, 0.2, 0.3, 9.0, 0.0, 0.4, 0.5, 2.0, 0.05]
    credit = TokenCredit(tokens, divergence, [d / (d + 0.5) for d in divergence], 0.5, "t", "s")
    assert [p[0] for p in pivotal_tokens(credit, 3, context=2)] == [4, 1, 8]
    assert pivotal_tokens(credit, 1, context=2)[0] == (4, "cd", "e", "fg")
    page = render_token_credit_html(credit, top_k=3)
    assert page.count("<mark") == 3
    assert "(viridis, linear scale)" in page and "(cividis, log scale)" in page


def test_colour_scales_are_perceptual_and_readable():
    from matplotlib import colormaps

    from scgrpo_verl.explain import ColourScale

    scale = ColourScale("viridis", 0.0, 1.0)
    for value in (0.0, 0.3, 0.7, 1.0):
        expected = tuple(round(c * 255) for c in colormaps["viridis"](value)[:3])
        assert scale.css(value) == "rgb(%d, %d, %d)" % expected
    assert scale.text_css(0.0) == "#fff" and scale.text_css(1.0) == "#000"  # dark purple / bright yellow
    log = ColourScale("cividis", 1e-4, 1.0, log=True)
    assert log.ticks() == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert log.css(1e-2) == "rgb(%d, %d, %d)" % tuple(round(c * 255) for c in colormaps["cividis"](0.5)[:3])


def test_the_verdict_says_wrong_or_not_graded_and_no_warning_for_a_trained_model():
    from scgrpo_verl.explain import TokenCredit, grade_rollout, render_token_credit_html, untrained_warning

    assert grade_rollout("It is 8. #### 8", "4 + 5 = 9 #### 9")[0] is False
    assert grade_rollout("The answer is B", "see the notes", ground_truth="B", data_source="sciknoweval")[0] is True
    correct, verdict = grade_rollout("It is 9", "no final answer here")
    assert correct is None and "give --ground-truth" in verdict
    credit = TokenCredit(tokens=["a", "b"], divergence=[0.5, 2.0], weights=[0.3, 0.6], c=1.0, teacher_prompt="t",
                         student_prompt="s", verdict="the rollout is wrong (graded as math500 against '9')")
    assert untrained_warning(credit) == ""
    page = render_token_credit_html(credit)
    assert '<p id="verdict">The rollout is wrong' in page and 'id="warning"' not in page
