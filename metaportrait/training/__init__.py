"""Training: datasets, losses, the Accelerate loops (base, meta-learning, super-resolution, few-shot).

``metaportrait.training.reptile`` implements Reptile (MetaPortrait Algorithm 1) and the
budgeted fine-tuning used for personalization.
"""
