"""The dotted-key difference of two configs, for tests of config files (one row changes its switches)."""


def flat(d, prefix=""):
  """``{"a.b": value}`` of a nested dict; lists as tuples (so they compare with config tuples)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat(v, prefix + k + "."))
    else:
      out[prefix + k] = tuple(v) if isinstance(v, list) else v
  return out


def diff(a, b, absent="<absent>"):
  """``{key: a's value}`` for every dotted key where ConfigDicts ``a`` and ``b`` differ (``absent``
  where ``a`` lacks the key)."""
  fa, fb = flat(a.to_dict()), flat(b.to_dict())
  return {k: fa.get(k, absent) for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>")}
