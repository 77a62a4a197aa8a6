"""Fail CI unless PostgreSQL tests ran and none of them was skipped."""

import sys
import xml.etree.ElementTree as ET

tree = ET.parse(sys.argv[1])
ran = skipped = 0
for case in tree.iter("testcase"):
    name = case.get("name", "")
    if "postgres" not in name and "postgres" not in case.get("classname", ""):
        continue
    if case.find("skipped") is not None:
        skipped += 1
        print(f"skipped PostgreSQL test: {case.get('classname')}::{name}")
    else:
        ran += 1
print(f"PostgreSQL tests: {ran} ran, {skipped} skipped")
if ran == 0 or skipped:
    sys.exit("PostgreSQL tests did not all run: CI fails rather than passing without them")
