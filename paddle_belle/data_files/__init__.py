"""BELLE's data files shipped with the package (ODC-By, see README.md and DATA_LICENSE here)."""
from pathlib import Path

DIR = Path(__file__).parent
SEED_TASKS = DIR / "zh_seed_tasks.json"
SELF_INSTRUCT_PROMPT = DIR / "prompt_cn.txt"
EVAL_SET = DIR / "eval_set.json"
EVAL_PROMPTS = DIR / "eval_prompt.json"
SCHOOL_MATH = DIR / "dev1K_school_math.json"
