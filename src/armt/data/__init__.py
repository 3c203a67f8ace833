"""Data: books and tokenizers, language-modelling windows, bAbI and BABILong. Never imports the model."""
