"""Packaged templates, shipped as ``recc.templates``.

``clusters/*.yaml`` are ClusterSpec templates (``recc templates`` lists them);
``k8s/*.j2`` are the Kubernetes manifest templates :mod:`recc.render` fills in.
"""
