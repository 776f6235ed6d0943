"""Glue that lets other libraries' trainers drive a :class:`splice.AdaptedModel` (imported on demand)."""
