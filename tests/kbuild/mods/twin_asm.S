/* Part of twin that is not bitcode: linked as it is. */
	.text
	.globl twin_asm_answer
	.type twin_asm_answer, @function
twin_asm_answer:
	movl $42, %eax
	ret
	.size twin_asm_answer, .-twin_asm_answer
