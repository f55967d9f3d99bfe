"""Generate the bundled natural-language-to-SQL example (seeded, so the file is reproducible).

    python examples/nl2sql/generate.py > examples/nl2sql/data/nl2sql.jsonl
    python examples/nl2sql/generate.py pairs > examples/nl2sql/data/nl2sql-pairs.jsonl

The pairs (for preference tuning, edgeft-dpo.yaml) ask questions the SFT file does not, so none is
one of the held-out examples eval scores; each rejected answer is a plausible wrong SQL: a wrong
column, a missing WHERE, a wrong aggregate, a flipped comparison or a wrong value.

Schema: employees(id, name, department, salary, hire_year, city)
        departments(id, name, budget, floor)
"""

from __future__ import annotations

import json
import random
import sys

INSTRUCTION = "Convert the following natural language query into a SQL statement."
DEPARTMENTS = ["sales", "engineering", "marketing", "finance", "support", "legal"]
CITIES = ["Paris", "Berlin", "Madrid", "Oslo", "Rome", "Vienna", "Lisbon"]
NAMES = ["Alice", "Bruno", "Chen", "Dana", "Emil", "Farah", "Goran", "Hana"]


# (question, SQL) templates; {d} department, {c} city, {n} name, {s} salary, {b} budget,
# {y} year, {f} floor.
TEMPLATES = [
    ("List all employees in the {d} department.", "SELECT * FROM employees WHERE department = '{d}';"),
    ("Show the names of employees who earn more than {s}.", "SELECT name FROM employees WHERE salary > {s};"),
    ("How many employees work in {c}?", "SELECT COUNT(*) FROM employees WHERE city = '{c}';"),
    (
        "What is the average salary in the {d} department?",
        "SELECT AVG(salary) FROM employees WHERE department = '{d}';",
    ),
    ("Find employees hired after {y}.", "SELECT * FROM employees WHERE hire_year > {y};"),
    ("Give the salary of {n}.", "SELECT salary FROM employees WHERE name = '{n}';"),
    ("Which departments have a budget above {b}?", "SELECT name FROM departments WHERE budget > {b};"),
    ("List departments on floor {f}.", "SELECT name FROM departments WHERE floor = {f};"),
    ("Show the highest salary in {c}.", "SELECT MAX(salary) FROM employees WHERE city = '{c}';"),
    (
        "Count the employees in each department.",
        "SELECT department, COUNT(*) FROM employees GROUP BY department;",
    ),
    (
        "List employees in {c} ordered by salary, highest first.",
        "SELECT * FROM employees WHERE city = '{c}' ORDER BY salary DESC;",
    ),
    (
        "Show names and cities of employees in the {d} department hired before {y}.",
        "SELECT name, city FROM employees WHERE department = '{d}' AND hire_year < {y};",
    ),
]


def row(rng: random.Random, new_numbers: bool = False) -> tuple[str, str]:
    """A question and its SQL; `new_numbers`: salaries, years and floors the SFT rows never have."""
    k = rng.randrange(len(TEMPLATES))
    d, c, n = rng.choice(DEPARTMENTS), rng.choice(CITIES), rng.choice(NAMES)
    if new_numbers:
        s, y, f = rng.randrange(150, 400) * 1000, rng.randrange(1985, 2005), rng.randrange(9, 30)
    else:
        s, y, f = rng.randrange(30, 150) * 1000, rng.randrange(2005, 2025), rng.randrange(1, 9)
    values = {"d": d, "c": c, "n": n, "s": s, "b": s * 10, "y": y, "f": f}
    question, sql = TEMPLATES[k]
    return question.format(**values), sql.format(**values)


AGGREGATES = ("COUNT", "AVG", "MAX", "MIN", "SUM")
COLUMNS = ("name", "salary", "city", "department", "hire_year")


def corrupt(sql: str, rng: random.Random) -> str:
    """A plausible wrong query for the same question (different from `sql`)."""
    edits = []
    if " WHERE " in sql:
        head, _, tail = sql.partition(" WHERE ")
        rest = tail.split(" ORDER BY ")[1:] or tail.split(" GROUP BY ")[1:]
        edits.append(
            head + (" ORDER BY " + rest[0] if rest and "ORDER" in tail else "") + (";" if not rest else "")
        )
    for agg in AGGREGATES:
        if agg + "(" in sql:
            edits.append(sql.replace(agg + "(", rng.choice([a for a in AGGREGATES if a != agg]) + "(", 1))
    for col in COLUMNS:
        if f"SELECT {col} " in sql or f"({col})" in sql:
            other = rng.choice([c for c in COLUMNS if c != col])
            edits.append(
                sql.replace(f"SELECT {col} ", f"SELECT {other} ", 1).replace(f"({col})", f"({other})", 1)
            )
    for a, b in ((" > ", " < "), (" < ", " > ")):
        if a in sql:
            edits.append(sql.replace(a, b, 1))
    for word in DEPARTMENTS + CITIES + NAMES:
        if f"'{word}'" in sql:
            pool = next(p for p in (DEPARTMENTS, CITIES, NAMES) if word in p)
            edits.append(sql.replace(f"'{word}'", f"'{rng.choice([w for w in pool if w != word])}'", 1))
    edits = [e if e.endswith(";") else e.rstrip(";") + ";" for e in edits if e and e != sql]
    return rng.choice(edits) if edits else sql.replace("SELECT ", "SELECT DISTINCT ", 1)


def pairs(n: int = 300, seed: int = 11) -> None:
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < n:
        question, sql = row(rng, new_numbers=True)
        if question in seen or not any(ch.isdigit() for ch in question):  # SFT asks the others
            continue
        seen.add(question)
        prompt = f"{INSTRUCTION}\n\n{question}"
        sys.stdout.write(json.dumps({"prompt": prompt, "chosen": sql, "rejected": corrupt(sql, rng)}) + "\n")


def main(n: int = 400, seed: int = 7) -> None:
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < n:
        question, sql = row(rng)
        if question in seen:
            continue
        seen.add(question)
        sys.stdout.write(json.dumps({"instruction": INSTRUCTION, "input": question, "output": sql}) + "\n")


if __name__ == "__main__":
    pairs() if sys.argv[1:] == ["pairs"] else main()
