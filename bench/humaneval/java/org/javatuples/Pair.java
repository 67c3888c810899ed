package org.javatuples;

import java.util.Objects;

/**
 * A two-element value with the small part of the javatuples Pair API that HumanEval programs use
 * (MultiPL-E's Java prompts import org.javatuples): with(), getValue0(), getValue1(), equality.
 */
public final class Pair<A, B> {
    private final A value0;
    private final B value1;

    public Pair(A value0, B value1) {
        this.value0 = value0;
        this.value1 = value1;
    }

    public static <A, B> Pair<A, B> with(A value0, B value1) {
        return new Pair<>(value0, value1);
    }

    public A getValue0() {
        return value0;
    }

    public B getValue1() {
        return value1;
    }

    public int getSize() {
        return 2;
    }

    @Override
    public boolean equals(Object other) {
        return other instanceof Pair<?, ?> p
                && Objects.equals(value0, p.value0) && Objects.equals(value1, p.value1);
    }

    @Override
    public int hashCode() {
        return Objects.hash(value0, value1);
    }

    @Override
    public String toString() {
        return "[" + value0 + ", " + value1 + "]";
    }
}
