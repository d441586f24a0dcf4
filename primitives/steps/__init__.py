"""Every step kind, one module each; importing this package registers them all in STEPS.

`KINDS` is the order the guide and error messages list them in: the verbs for events first, then
the stateful ones, then those that raise signals. (A tuple rather than an import list, so that an
import sorter cannot change it.)
"""

from importlib import import_module

from primitives.registry import STEPS

KINDS = ("filter", "parse", "transform", "enrich", "dedupe", "sample", "aggregate", "derive", "rule")

for _kind in KINDS:
    import_module(f"primitives.steps.{_kind}")

# A kind module may import another (for shared helpers), registering it early: restore the order.
_registered = dict(STEPS)
STEPS.clear()
STEPS.update({name: _registered.pop(name) for name in KINDS if name in _registered})
STEPS.update(_registered)
