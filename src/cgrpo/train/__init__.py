"""The training side of cgrpo: pure algorithm functions and the loop that uses them."""
