"""The model a recipe describes, built without any device policy (``build``): the views (``views``), the
online network and its momentum target (``network``, ``target``), masking (``masking``), and the record a
loss receives (``outputs``: ``StepOutputs`` of two ``Branch`` records, ``branch``) with what each loss reads
(``reads``, ``needs``)."""
