"""Generate the bundled natural-language-to-SQL example (seeded, so the file is reproducible).

    python examples/nl2sql/generate.py > examples/nl2sql/data/nl2sql.jsonl

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


def row(rng: random.Random) -> tuple[str, str]:
    k = rng.randrange(len(TEMPLATES))
    d, c, n = rng.choice(DEPARTMENTS), rng.choice(CITIES), rng.choice(NAMES)
    s, y, f = rng.randrange(30, 150) * 1000, rng.randrange(2005, 2025), rng.randrange(1, 9)
    values = {"d": d, "c": c, "n": n, "s": s, "b": s * 10, "y": y, "f": f}
    question, sql = TEMPLATES[k]
    return question.format(**values), sql.format(**values)


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
    main()
