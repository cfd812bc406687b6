/* Part of twin: small functions the thin link imports into twin_a.c. */
static const int twin_table[] = { 1, 2, 3, 5, 8, 13 };

int twin_b_scale(int x)
{
	return x * TWIN_SCALE;
}

int twin_b_table_sum(void)
{
	int s = 0;
	for (unsigned i = 0; i < sizeof(twin_table) / sizeof(twin_table[0]); i++)
		s += twin_table[i];
	return s;
}
