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


def row(rng: random.Random) -> tuple[str, str]:
    k = rng.randrange(12)
    d, c, n = rng.choice(DEPARTMENTS), rng.choice(CITIES), rng.choice(NAMES)
    s, y, f = rng.randrange(30, 150) * 1000, rng.randrange(2005, 2025), rng.randrange(1, 9)
    if k == 0:
        return f"List all employees in the {d} department.", \
            f"SELECT * FROM employees WHERE department = '{d}';"
    if k == 1:
        return f"Show the names of employees who earn more than {s}.", \
            f"SELECT name FROM employees WHERE salary > {s};"
    if k == 2:
        return f"How many employees work in {c}?", \
            f"SELECT COUNT(*) FROM employees WHERE city = '{c}';"
    if k == 3:
        return f"What is the average salary in the {d} department?", \
            f"SELECT AVG(salary) FROM employees WHERE department = '{d}';"
    if k == 4:
        return f"Find employees hired after {y}.", \
            f"SELECT * FROM employees WHERE hire_year > {y};"
    if k == 5:
        return f"Give the salary of {n}.", \
            f"SELECT salary FROM employees WHERE name = '{n}';"
    if k == 6:
        return f"Which departments have a budget above {s * 10}?", \
            f"SELECT name FROM departments WHERE budget > {s * 10};"
    if k == 7:
        return f"List departments on floor {f}.", \
            f"SELECT name FROM departments WHERE floor = {f};"
    if k == 8:
        return f"Show the highest salary in {c}.", \
            f"SELECT MAX(salary) FROM employees WHERE city = '{c}';"
    if k == 9:
        return "Count the employees in each department.", \
            "SELECT department, COUNT(*) FROM employees GROUP BY department;"
    if k == 10:
        return f"List employees in {c} ordered by salary, highest first.", \
            f"SELECT * FROM employees WHERE city = '{c}' ORDER BY salary DESC;"
    return f"Show names and cities of employees in the {d} department hired before {y}.", \
        f"SELECT name, city FROM employees WHERE department = '{d}' AND hire_year < {y};"


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
