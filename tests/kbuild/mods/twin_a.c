/* Part of the composite module twin: calls into twin_b.c (imported and
 * inlined across parts by the thin link) and into the assembler part. */
int twin_b_scale(int x);
int twin_b_table_sum(void);
int twin_asm_answer(void);

static int twin_state;

int twin_init(void)
{
	twin_state = twin_b_scale(14) + twin_b_table_sum() + twin_asm_answer();
	return twin_state;
}

int twin_exit(void)
{
	return twin_state - twin_b_scale(1);
}
