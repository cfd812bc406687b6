/* A single-object module. */
static int solo_counter;

static int solo_step(int by)
{
	solo_counter += by;
	return solo_counter;
}

int solo_init(void)
{
#ifdef MODULE
	return solo_step(7);
#else
	return -1;
#endif
}
