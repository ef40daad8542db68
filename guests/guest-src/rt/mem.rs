//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`, which compiled code calls and which no
//! libc provides here. Written in assembly so the compiler cannot turn them into calls to
//! themselves; string instructions keep the CPL-0 instruction count low.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .text.rt_mem, "ax"
    .global memcpy
memcpy:
    movq %rdi, %rax
    movq %rdx, %rcx
    rep movsb
    ret

    .global memmove
memmove:
    movq %rdi, %rax
    movq %rdx, %rcx
    cmpq %rsi, %rdi
    jbe 1f
    leaq (%rsi,%rdx), %r8
    cmpq %r8, %rdi
    jae 1f
    leaq -1(%rsi,%rdx), %rsi
    leaq -1(%rdi,%rdx), %rdi
    std
    rep movsb
    cld
    ret
1:  rep movsb
    ret

    .global memset
memset:
    movq %rdi, %r9
    movl %esi, %eax
    movq %rdx, %rcx
    rep stosb
    movq %r9, %rax
    ret

    .global memcmp
    .global bcmp
memcmp:
bcmp:
    xorl %eax, %eax
    testq %rdx, %rdx
    jz 3f
2:  movzbl (%rdi), %eax
    movzbl (%rsi), %ecx
    subl %ecx, %eax
    jnz 3f
    incq %rdi
    incq %rsi
    decq %rdx
    jnz 2b
3:  ret
    .text
    "#,
    options(att_syntax)
);
