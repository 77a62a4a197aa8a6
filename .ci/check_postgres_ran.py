"""Fail CI unless PostgreSQL tests ran and none of them was skipped.

tests/conftest.py tags every test that needs PostgreSQL with the JUnit property
backend=postgres; here we count those tests and their outcomes.
"""

import sys
import xml.etree.ElementTree as ET

ran = skipped = 0
for case in ET.parse(sys.argv[1]).iter("testcase"):
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    if props.get("backend") != "postgres":
        continue
    if case.find("skipped") is not None:
        skipped += 1
        print(f"skipped PostgreSQL test: {case.get('classname')}::{case.get('name')}")
    else:
        ran += 1
print(f"PostgreSQL tests: {ran} ran, {skipped} skipped")
if ran == 0 or skipped:
    sys.exit("PostgreSQL tests did not all run: CI fails rather than passing without them")
