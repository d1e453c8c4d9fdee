"""Retrieval evaluation for DOLG-TFX: pure-numpy protocols (see ``protocols``).

Revisited Oxford/Paris mAP and mP@k, GLDv2 mAP@100, UKBench N-S score and a blocked
leave-one-out evaluation of an embedding set. Nothing here imports TensorFlow or TFX.
"""
