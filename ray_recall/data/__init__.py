"""Reading interactions, fitting vocabularies, building sequences and negatives."""
