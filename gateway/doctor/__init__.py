"""``gateway doctor``: the configuration checked as ``serve`` would load it, with its
dependencies, each problem printed with its fix. ``serve`` runs the static part of it
(:mod:`gateway.doctor.preflight`) before it starts."""
