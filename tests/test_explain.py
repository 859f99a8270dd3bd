"""``scgrpo-verl explain``: the token-credit page, rendered by headless Chromium."""

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
    shot = tmp_path / "credit.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                    "--window-size=1000,800", out.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 1000


def test_token_credit_values_match_a_naive_computation(model_path, tmp_path):
    """D per token = KL(q || p) from two separate forwards; f(D) = D / (D + c) with c = max(P75(D), c_min)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scgrpo_verl.teacher.templates import TemplateConfig, sc_grpo_teacher_messages

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
    assert "wrote" in capsys.readouterr().out
    page = out.read_text()
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained
    assert page.count('class="tok"') == 2 * len("It is 9. #### 9")  # byte-level: one token per byte
