"""DCNv4 (FlashInternImage): DCNv3 on one fused offset/mask tensor; reuses the dcnv3 kernels."""
