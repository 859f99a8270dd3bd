"""AIME 2024 (HuggingFaceH4/aime_2024: id, problem, solution, answer, url, year)
-> <out>/test.parquet (evaluation only: every upstream split is written to test)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import run_math_eval  # noqa: E402


def main(argv=None):
    return run_math_eval("aime2024", __doc__, "HuggingFaceH4/aime_2024",
                         question_keys=("problem",), meta_keys=("id", "url", "year"), argv=argv)


if __name__ == "__main__":
    main()
