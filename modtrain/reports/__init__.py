"""Reports that test the method: modular vs end-to-end, surrogate vs final loss, HPO, depth."""
