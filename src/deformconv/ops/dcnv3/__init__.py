"""DCNv3 (InternImage): the public function, registered operators and kernels."""
