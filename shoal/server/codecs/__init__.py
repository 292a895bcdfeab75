"""Protocol conversion per model kind, apart from model execution (as MLServer keeps its codecs).

A codec turns what arrives on the wire (native JSON, query strings, raw media, KServe v2
typed tensors) into the inputs its kind's handler runs, and results back into v2 tensors;
it knows nothing of graphs, devices or threads. ``base.Codec`` is the contract; one
module per kind (``text``, ``detector``) and one generic codec for numeric rows
(``numeric``) that a new kind can reuse as it is.
"""
