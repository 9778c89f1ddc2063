"""Deformable RoI pooling: the public function and its registered op."""
