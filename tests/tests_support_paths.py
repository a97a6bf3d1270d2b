"""Facts about the shared fixtures that several tests need."""

TRANSCRIPT = (
    "AFTER EARLY NIGHTFALL THE YELLOW LAMPS WOULD LIGHT UP HERE AND THERE THE SQUALID "
    "QUARTER OF THE BRAFFLES"
)
